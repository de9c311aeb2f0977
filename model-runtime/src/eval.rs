//! Quality measurement: KorSTS-format files (tab-separated, gold score in column 5, sentences in
//! columns 6 and 7) and the Spearman rank correlation of cosine similarity against gold.

use std::path::Path;

/// One scored sentence pair.
#[derive(Debug, Clone)]
pub struct StsPair {
    pub score: f64,
    pub first: String,
    pub second: String,
}

/// Reads a KorSTS-format file (a header line, then `genre filename year id score s1 s2`).
pub fn read_sts(path: &Path) -> anyhow::Result<Vec<StsPair>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut pairs = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let columns: Vec<&str> = line.split('\t').collect();
        let (Some(score), Some(first), Some(second)) =
            (columns.get(4), columns.get(5), columns.get(6))
        else {
            anyhow::bail!(
                "{}:{}: expected 7 tab-separated columns (genre filename year id score sentence1 sentence2), found {}",
                path.display(),
                number + 1,
                columns.len()
            );
        };
        let score: f64 = score.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{}:{}: the score `{score}` is not a number",
                path.display(),
                number + 1
            )
        })?;
        pairs.push(StsPair {
            score,
            first: first.to_string(),
            second: second.to_string(),
        });
    }
    if pairs.len() < 2 {
        anyhow::bail!("{}: fewer than 2 sentence pairs", path.display());
    }
    Ok(pairs)
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// Spearman correlation ×100, ties given their average rank.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    100.0 * cov / (va * vb).sqrt()
}

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
    let mut rank = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            rank[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_orders() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 40.0]) - 100.0).abs() < 1e-9);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 100.0).abs() < 1e-9);
        // Ties share their average rank.
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![1.5, 0.0, 1.5]);
    }

    #[test]
    fn malformed_rows_are_named() {
        let dir = std::env::temp_dir().join(format!("moa-sts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.tsv");
        std::fs::write(&file, "h\na\tb\tc\td\t4.0\tx\ty\na\tb\tc\n").unwrap();
        let err = read_sts(&file).unwrap_err().to_string();
        assert!(err.contains("bad.tsv:3"), "{err}");
        std::fs::write(&file, "h\na\tb\tc\td\tfive\tx\ty\n").unwrap();
        let err = read_sts(&file).unwrap_err().to_string();
        assert!(err.contains("`five`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
