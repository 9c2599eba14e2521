//! Rule 5 (duplicates), in one place: of the items of one output family that have the same
//! series, the first in output order is kept. Used by the rendering of one source's family
//! (`lines.rs`) and by the merge of families whose series may meet across sources
//! (`write.rs`).

/// Marks in `dup` (one flag per item, resized to `keys.len()`) every item whose series an
/// earlier item already has, and returns how many. `keys` holds (series hash, item index) for
/// every item and is sorted here; `same(a, b)` compares the series of items `a` and `b`
/// exactly, and is only called when their hashes are equal.
pub(super) fn first_of_each_series(
    keys: &mut [(u64, u32)],
    dup: &mut Vec<bool>,
    mut same: impl FnMut(u32, u32) -> bool,
) -> u64 {
    dup.clear();
    dup.resize(keys.len(), false);
    keys.sort_unstable();
    let mut duplicates = 0;
    let mut k = 0;
    while k + 1 < keys.len() {
        if keys[k].0 != keys[k + 1].0 {
            k += 1;
            continue;
        }
        let mut z = k + 1;
        while z < keys.len() && keys[z].0 == keys[k].0 {
            z += 1;
        }
        // Equal hashes: compare exactly. Items of one hash are sorted by index, so the later
        // of two equal series is `y`.
        for x in k..z {
            let ix = keys[x].1;
            if dup[ix as usize] {
                continue;
            }
            for &(_, iy) in &keys[x + 1..z] {
                if !dup[iy as usize] && same(ix, iy) {
                    dup[iy as usize] = true;
                    duplicates += 1;
                }
            }
        }
        k = z;
    }
    duplicates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_of_each_series() {
        // Items 0..5 with series a, b, a, c, b; `c` collides in hash with `a`.
        let series = ["a", "b", "a", "c", "b"];
        let hash = |s: &str| if s == "b" { 2 } else { 1 };
        let mut keys: Vec<(u64, u32)> = series
            .iter()
            .enumerate()
            .rev()
            .map(|(i, s)| (hash(s), i as u32))
            .collect();
        let mut dup = Vec::new();
        let n = first_of_each_series(&mut keys, &mut dup, |a, b| {
            series[a as usize] == series[b as usize]
        });
        assert_eq!(n, 2);
        assert_eq!(dup, [false, false, true, false, true]);
    }
}
