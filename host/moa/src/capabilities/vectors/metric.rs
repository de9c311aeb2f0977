//! How an index compares vectors: the metric's distance (what HNSW orders by, computed the same way
//! for exact search) and its score on Atlas's `vectorSearchScore` scale (higher is nearer).

/// The similarity an index uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    #[default]
    Cosine,
    #[serde(alias = "dotproduct", alias = "dotProduct")]
    Dot,
    #[serde(alias = "l2")]
    Euclidean,
}

impl Metric {
    /// The name Atlas's index definition uses (`similarity`).
    pub fn atlas_name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dotProduct",
            Metric::Euclidean => "euclidean",
        }
    }

    pub fn usearch_kind(self) -> usearch::MetricKind {
        match self {
            Metric::Cosine => usearch::MetricKind::Cos,
            Metric::Dot => usearch::MetricKind::IP,
            Metric::Euclidean => usearch::MetricKind::L2sq,
        }
    }

    /// The distance usearch reports for this metric: `1 - cos`, `1 - dot`, or the squared L2.
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => {
                let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
                for (x, y) in a.iter().zip(b) {
                    dot += x * y;
                    na += x * x;
                    nb += y * y;
                }
                let norms = (na * nb).sqrt();
                if norms == 0.0 { 1.0 } else { 1.0 - dot / norms }
            }
            Metric::Dot => 1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>(),
            Metric::Euclidean => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        }
    }

    /// The score of a distance, as Atlas scores: cosine and dot `(1 + similarity) / 2`, euclidean
    /// `1 / (1 + distance²)`.
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Metric::Cosine | Metric::Dot => (2.0 - distance) / 2.0,
            Metric::Euclidean => 1.0 / (1.0 + distance.max(0.0)),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::Euclidean => "euclidean",
        })
    }
}

impl std::str::FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "dot" => Ok(Metric::Dot),
            "euclidean" => Ok(Metric::Euclidean),
            other => Err(format!("metric `{other}`: use cosine, dot or euclidean")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_atlas() {
        let a = [1.0, 0.0];
        // Same direction: cosine similarity 1 -> score 1; opposite -> 0; orthogonal -> 0.5.
        assert!(
            (Metric::Cosine.score(Metric::Cosine.distance(&a, &[2.0, 0.0])) - 1.0).abs() < 1e-6
        );
        assert!(
            Metric::Cosine
                .score(Metric::Cosine.distance(&a, &[-1.0, 0.0]))
                .abs()
                < 1e-6
        );
        assert!(
            (Metric::Cosine.score(Metric::Cosine.distance(&a, &[0.0, 3.0])) - 0.5).abs() < 1e-6
        );
        // Euclidean: distance² 4 -> 1/5.
        assert!(
            (Metric::Euclidean.score(Metric::Euclidean.distance(&a, &[1.0, 2.0])) - 0.2).abs()
                < 1e-6
        );
        assert!((Metric::Dot.score(Metric::Dot.distance(&a, &[0.5, 9.0])) - 0.75).abs() < 1e-6);
    }
}
