//! HDF5 helpers shared by the pseudo-label file ([`crate::pseudo`]) and the decoded-audio cache
//! ([`crate::data::cache`]): strings stored as variable-length UTF-8, scalar attributes and 1-D
//! datasets. Every helper returns `hdf5::Result`, so each caller keeps its own error type and
//! names the file and the dataset or attribute in it.
use hdf5::types::VarLenUnicode;
use hdf5::{File, H5Type, Result};

/// `v` as HDF5 variable-length UTF-8 strings; a string with a NUL byte cannot be stored.
pub fn varlen(v: &[String]) -> Result<Vec<VarLenUnicode>> {
    v.iter()
        .map(|s| {
            s.parse::<VarLenUnicode>()
                .map_err(|e| format!("cannot store {s:?}: {e}").into())
        })
        .collect()
}

/// A new 1-D dataset `name` holding `data`.
pub fn write_1d<T: H5Type>(file: &File, name: &str, data: &[T]) -> Result<()> {
    file.new_dataset_builder()
        .with_data(data)
        .create(name)
        .map(drop)
}

/// A new 1-D dataset `name` of strings.
pub fn write_strings(file: &File, name: &str, v: &[String]) -> Result<()> {
    write_1d(file, name, &varlen(v)?)
}

/// A new scalar attribute `name` of the file.
pub fn write_attr<T: H5Type>(file: &File, name: &str, value: &T) -> Result<()> {
    file.new_attr::<T>()
        .shape(())
        .create(name)
        .and_then(|a| a.write_scalar(value))
}

/// A new scalar string attribute `name` of the file.
pub fn write_str_attr(file: &File, name: &str, value: &str) -> Result<()> {
    let v = varlen(&[value.to_string()])?;
    write_attr(file, name, &v[0])
}

/// The whole dataset `name`, flattened.
pub fn read_1d<T: H5Type>(file: &File, name: &str) -> Result<Vec<T>> {
    file.dataset(name)?.read_raw()
}

/// The scalar attribute `name` of the file.
pub fn read_attr<T: H5Type>(file: &File, name: &str) -> Result<T> {
    file.attr(name)?.read_scalar()
}

/// The scalar string attribute `name` of the file.
pub fn read_str_attr(file: &File, name: &str) -> Result<String> {
    Ok(read_attr::<VarLenUnicode>(file, name)?.as_str().to_string())
}

/// The 1-D string dataset `name`.
pub fn read_strings(file: &File, name: &str) -> Result<Vec<String>> {
    Ok(read_1d::<VarLenUnicode>(file, name)?
        .into_iter()
        .map(|s| s.as_str().to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_attributes_round_trip() {
        let dir = std::env::temp_dir().join(format!("birdclef-h5-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.h5");
        let names = vec![
            "XC123.ogg".to_string(),
            "ünïcode/ø.flac".to_string(),
            String::new(),
        ];
        {
            let file = File::create(&path).expect("create");
            write_strings(&file, "names", &names).expect("strings");
            write_1d(&file, "x", &[1.5f64, -2.0]).expect("floats");
            write_attr(&file, "version", &7u32).expect("attr");
            write_str_attr(&file, "key", "abc").expect("str attr");
            let nul = write_str_attr(&file, "bad", "a\0b").expect_err("NUL");
            assert!(nul.to_string().contains("cannot store"), "{nul}");
        }
        let file = File::open(&path).expect("open");
        assert_eq!(read_strings(&file, "names").expect("names"), names);
        assert_eq!(read_1d::<f64>(&file, "x").expect("x"), [1.5, -2.0]);
        assert_eq!(read_attr::<u32>(&file, "version").expect("version"), 7);
        assert_eq!(read_str_attr(&file, "key").expect("key"), "abc");
        assert!(read_attr::<u32>(&file, "missing").is_err());
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
