//! Stratified K-fold assignment by primary label, optionally grouped.
//!
//! [`assign_folds`] gives each recording a fold in `0..k`, or [`ALWAYS_TRAIN`]: recordings of a
//! rare class (fewer than `min_count_for_val` recordings with that primary label) are never used
//! for validation, since a class with one or two recordings cannot be both learned and measured.
//! For fold `f`, training uses every recording whose value is not `f` (so `ALWAYS_TRAIN` ones in
//! all folds) and validation those whose value is `f`; see [`split`].
//!
//! With groups (e.g. recordist), every recording of a group gets the same value: groups are
//! stratified by their majority primary label (ties: the lower label index), and a group that
//! holds any recording of a rare class is entirely `ALWAYS_TRAIN` (putting only that recording in
//! training would leak its group mates' sound into validation). Recordings without a group value
//! are groups of their own.
//!
//! The assignment is greedy: for each label in turn, its groups (largest first, equal sizes in
//! a seeded random order) each go to the fold holding the fewest recordings of that label, ties to
//! the fold with the fewest recordings overall, then to a seeded rotation. Without groups every
//! group has one recording, so the per-class counts of any two folds differ by at most one, and so
//! do the fold totals up to the rare classes removed. Same dataset, `k` and seed: same folds.

use std::collections::HashMap;

use birdclef_models::rng::Rng;

use super::Dataset;

/// The fold value of recordings that are in the training set of every fold.
pub const ALWAYS_TRAIN: usize = usize::MAX;

/// In a fold vector: a recording that is neither trained nor validated on (a test split, scored
/// after the run).
pub const HELD_OUT: usize = usize::MAX - 1;

/// Fold of each recording (same order as `ds.recordings`): a value in `0..k`, or
/// [`ALWAYS_TRAIN`] for rare classes (fewer than `min_count_for_val` recordings with that primary
/// label) and the groups holding them. `k` must be at least 1.
pub fn assign_folds(ds: &Dataset, k: usize, seed: u64, min_count_for_val: usize) -> Vec<usize> {
    let k = k.max(1);
    let n = ds.recordings.len();
    let mut per_class = vec![0usize; ds.labels.len()];
    for r in &ds.recordings {
        if let Some(c) = per_class.get_mut(r.primary) {
            *c += 1;
        }
    }
    let rare = |label: usize| per_class.get(label).copied().unwrap_or(0) < min_count_for_val;

    // Groups in order of first appearance; ungrouped recordings are singletons.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, r) in ds.recordings.iter().enumerate() {
        match r.group.as_deref() {
            Some(g) => {
                let gi = *by_name.entry(g).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[gi].push(i);
            }
            None => groups.push(vec![i]),
        }
    }

    let mut folds = vec![ALWAYS_TRAIN; n];
    // Majority label of each group that may be validated.
    let mut by_label: Vec<Vec<usize>> = vec![Vec::new(); ds.labels.len().max(1)];
    for (gi, members) in groups.iter().enumerate() {
        if members.iter().any(|&i| rare(ds.recordings[i].primary)) {
            continue;
        }
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for &i in members {
            *counts.entry(ds.recordings[i].primary).or_default() += 1;
        }
        let majority = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(l, _)| l)
            .unwrap_or(0);
        let slot = majority.min(by_label.len() - 1);
        by_label[slot].push(gi);
    }

    let mut rng = Rng::new(seed);
    let mut total = vec![0usize; k];
    for label_groups in &mut by_label {
        // Seeded shuffle, then largest first (stable, so equal sizes keep the shuffled order).
        rng.shuffle(label_groups);
        label_groups.sort_by_key(|&g| std::cmp::Reverse(groups[g].len()));
        let rotation = rng.below(k);
        let mut of_label = vec![0usize; k];
        for &g in label_groups.iter() {
            let size = groups[g].len();
            let fold = (0..k)
                .min_by_key(|&f| (of_label[f], total[f], (f + k - rotation) % k))
                .unwrap_or(0);
            of_label[fold] += size;
            total[fold] += size;
            for &i in &groups[g] {
                folds[i] = fold;
            }
        }
    }
    folds
}

/// Training and validation indices for fold `fold`: training is every recording whose value is
/// not `fold` (including [`ALWAYS_TRAIN`]), validation those whose value is `fold`.
pub fn split(folds: &[usize], fold: usize) -> (Vec<usize>, Vec<usize>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (i, &f) in folds.iter().enumerate() {
        if f == fold {
            val.push(i);
        } else {
            train.push(i);
        }
    }
    (train, val)
}
