//! An HNSW graph (Malkov & Yashunin) laid out as hnswlib lays it out: each node's level-0 links and
//! its vector sit in one contiguous block, upper levels apart, so a hop reads one block.
//!
//! Searches take `&self` and run concurrently; inserts and removals take `&mut self` (moa's
//! embedded index holds a read/write lock around its graph). Removed items stay in the graph as
//! waypoints and never come back in results. Search predicates apply inside the walk.

pub mod distance;

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::sync::Mutex;

/// How far apart two vectors are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `1 - a·b` (cosine over unit vectors).
    InnerProduct,
    /// `|a - b|²`.
    L2,
}

/// The graph's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub dimensions: usize,
    pub metric: Metric,
    /// Links per node on the upper levels; twice as many on level 0.
    pub m: usize,
    /// Candidates an insert considers.
    pub ef_construction: usize,
    /// Seed of the level draws (a rebuild from the same inserts is the same graph).
    pub seed: u64,
}

impl Params {
    pub fn new(dimensions: usize, metric: Metric) -> Self {
        Params {
            dimensions,
            metric,
            m: 16,
            ef_construction: 128,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HnswError {
    #[error("the vector has {got} dimensions; the graph holds {want}")]
    Dimensions { got: usize, want: usize },
    #[error("the graph is full ({0} nodes)")]
    Full(usize),
    #[error("reading or writing the graph: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a graph file of this version, or of other parameters: {0}")]
    Format(String),
}

/// A node and its distance to the query, ordered by distance (then node, for determinism).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored {
    distance: f32,
    node: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.node.cmp(&other.node))
    }
}

/// Marks of visited nodes, reset in O(1) by moving to the next epoch.
struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn reset(&mut self, nodes: usize) {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
    }

    /// True the first time `node` is seen in this epoch.
    fn first_visit(&mut self, node: u32) -> bool {
        let mark = &mut self.marks[node as usize];
        if *mark == self.epoch {
            false
        } else {
            *mark = self.epoch;
            true
        }
    }
}

/// The graph.
pub struct Hnsw {
    params: Params,
    /// Most links per node on level 0.
    m0: usize,
    /// u32 words per node block: the level-0 link count, `m0` links, then the vector's f32 bits.
    block: usize,
    data: Vec<u32>,
    /// Per node, its links on levels 1..=level (empty for level-0 nodes).
    upper: Vec<Vec<Vec<u32>>>,
    keys: Vec<u64>,
    deleted: Vec<bool>,
    /// Live key -> node.
    slots: HashMap<u64, u32>,
    entry: Option<u32>,
    max_level: usize,
    rng: u64,
    visited: Mutex<Vec<Visited>>,
    kernel: distance::Kernel,
}

impl Hnsw {
    pub fn new(params: Params) -> Self {
        let m0 = params.m * 2;
        Hnsw {
            params,
            m0,
            block: 1 + m0 + params.dimensions,
            data: Vec::new(),
            upper: Vec::new(),
            keys: Vec::new(),
            deleted: Vec::new(),
            slots: HashMap::new(),
            entry: None,
            max_level: 0,
            rng: params.seed.max(1),
            visited: Mutex::new(Vec::new()),
            kernel: match params.metric {
                Metric::InnerProduct => distance::dot_kernel(),
                Metric::L2 => distance::l2_kernel(),
            },
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Live items.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Nodes in the graph, removed ones included.
    pub fn nodes(&self) -> usize {
        self.keys.len()
    }

    /// Room for `more` nodes without reallocating.
    pub fn reserve(&mut self, more: usize) {
        self.data.reserve(more * self.block);
        self.upper.reserve(more);
        self.keys.reserve(more);
        self.deleted.reserve(more);
        self.slots.reserve(more);
    }

    pub fn contains(&self, key: u64) -> bool {
        self.slots.contains_key(&key)
    }

    /// Copies the vector of `key` into `out`; false when there is no such item.
    pub fn get(&self, key: u64, out: &mut [f32]) -> bool {
        match self.slots.get(&key) {
            Some(&node) => {
                out.copy_from_slice(self.vector(node));
                true
            }
            None => false,
        }
    }

    /// Takes `key` out of results (its node stays as a waypoint). False when it was not there.
    pub fn remove(&mut self, key: u64) -> bool {
        match self.slots.remove(&key) {
            Some(node) => {
                self.deleted[node as usize] = true;
                true
            }
            None => false,
        }
    }

    /// Adds `key` (replacing an earlier vector of the same key).
    pub fn insert(&mut self, key: u64, vector: &[f32]) -> Result<(), HnswError> {
        if vector.len() != self.params.dimensions {
            return Err(HnswError::Dimensions {
                got: vector.len(),
                want: self.params.dimensions,
            });
        }
        if self.keys.len() >= u32::MAX as usize {
            return Err(HnswError::Full(self.keys.len()));
        }
        self.remove(key);
        let node = self.keys.len() as u32;
        let level = self.draw_level();
        self.data.push(0);
        self.data.extend(std::iter::repeat_n(0u32, self.m0));
        self.data.extend(vector.iter().map(|v| v.to_bits()));
        self.upper.push(vec![Vec::new(); level]);
        self.keys.push(key);
        self.deleted.push(false);
        self.slots.insert(key, node);

        let Some(mut entry) = self.entry else {
            self.entry = Some(node);
            self.max_level = level;
            return Ok(());
        };
        let query = vector.to_vec();
        let mut entry_distance = self.distance_to(&query, entry);
        for level_now in (level + 1..=self.max_level).rev() {
            (entry, entry_distance) = self.greedy(&query, entry, entry_distance, level_now);
        }
        for level_now in (0..=level.min(self.max_level)).rev() {
            let found = self.search_level(
                &query,
                Scored {
                    distance: entry_distance,
                    node: entry,
                },
                self.params.ef_construction,
                level_now,
                &|_| true,
            );
            let neighbours = self.select(&found, self.params.m);
            self.set_links(node, level_now, &neighbours);
            let most = if level_now == 0 {
                self.m0
            } else {
                self.params.m
            };
            for other in &neighbours {
                self.link_back(other.node, node, level_now, most);
            }
            if let Some(best) = found.first() {
                entry = best.node;
                entry_distance = best.distance;
            }
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(node);
        }
        Ok(())
    }

    /// Removed nodes still in the graph as waypoints.
    pub fn removed(&self) -> usize {
        self.keys.len() - self.slots.len()
    }

    /// A new graph of the live items only (inserted in node order, so the same graph gives the
    /// same result), for when removed waypoints outnumber live items.
    pub fn compacted(&self) -> Result<Hnsw, HnswError> {
        let mut graph = Hnsw::new(self.params);
        graph.reserve(self.slots.len());
        for (node, &key) in self.keys.iter().enumerate() {
            if !self.deleted[node] {
                graph.insert(key, self.vector(node as u32))?;
            }
        }
        Ok(graph)
    }

    /// The `k` nearest live items to `query` that `accept` lets through, nearest first, as (key,
    /// distance). `ef` is the search breadth (at least `k`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>, HnswError> {
        if query.len() != self.params.dimensions {
            return Err(HnswError::Dimensions {
                got: query.len(),
                want: self.params.dimensions,
            });
        }
        let Some(mut entry) = self.entry else {
            return Ok(Vec::new());
        };
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut entry_distance = self.distance_to(query, entry);
        for level in (1..=self.max_level).rev() {
            (entry, entry_distance) = self.greedy(query, entry, entry_distance, level);
        }
        let wanted = |node: u32| !self.deleted[node as usize] && accept(self.keys[node as usize]);
        let found = self.search_level(
            query,
            Scored {
                distance: entry_distance,
                node: entry,
            },
            ef.max(k),
            0,
            &wanted,
        );
        Ok(found
            .into_iter()
            .take(k)
            .map(|s| (self.keys[s.node as usize], s.distance))
            .collect())
    }

    fn vector(&self, node: u32) -> &[f32] {
        let start = node as usize * self.block + 1 + self.m0;
        let words = &self.data[start..start + self.params.dimensions];
        // SAFETY: u32 and f32 have the same size and alignment, and every bit pattern is an f32.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<f32>(), words.len()) }
    }

    fn distance_to(&self, query: &[f32], node: u32) -> f32 {
        let raw = (self.kernel)(query, self.vector(node));
        match self.params.metric {
            Metric::InnerProduct => 1.0 - raw,
            Metric::L2 => raw,
        }
    }

    fn distance_between(&self, a: u32, b: u32) -> f32 {
        self.distance_to(self.vector(a), b)
    }

    fn links(&self, node: u32, level: usize) -> &[u32] {
        if level == 0 {
            let start = node as usize * self.block;
            let count = self.data[start] as usize;
            &self.data[start + 1..start + 1 + count]
        } else {
            &self.upper[node as usize][level - 1]
        }
    }

    fn set_links(&mut self, node: u32, level: usize, neighbours: &[Scored]) {
        if level == 0 {
            let start = node as usize * self.block;
            self.data[start] = neighbours.len() as u32;
            for (slot, n) in self.data[start + 1..start + 1 + neighbours.len()]
                .iter_mut()
                .zip(neighbours)
            {
                *slot = n.node;
            }
        } else {
            self.upper[node as usize][level - 1] = neighbours.iter().map(|n| n.node).collect();
        }
    }

    /// Adds `node` to `other`'s links, pruning them by the heuristic when full.
    fn link_back(&mut self, other: u32, node: u32, level: usize, most: usize) {
        let current = self.links(other, level);
        if current.contains(&node) {
            return;
        }
        if current.len() < most {
            if level == 0 {
                let start = other as usize * self.block;
                let count = self.data[start] as usize;
                self.data[start + 1 + count] = node;
                self.data[start] += 1;
            } else {
                self.upper[other as usize][level - 1].push(node);
            }
            return;
        }
        let mut candidates: Vec<Scored> = current
            .iter()
            .chain(std::iter::once(&node))
            .map(|&n| Scored {
                distance: self.distance_between(other, n),
                node: n,
            })
            .collect();
        candidates.sort();
        let kept = self.select(&candidates, most);
        self.set_links(other, level, &kept);
    }

    /// hnswlib's neighbour heuristic over `sorted` (nearest first): a candidate is kept when it is
    /// nearer to the base than to every one kept before it, up to `most`.
    fn select(&self, sorted: &[Scored], most: usize) -> Vec<Scored> {
        let mut kept: Vec<Scored> = Vec::with_capacity(most);
        for candidate in sorted {
            if kept.len() >= most {
                break;
            }
            let diverse = kept
                .iter()
                .all(|k| self.distance_between(k.node, candidate.node) >= candidate.distance);
            if diverse {
                kept.push(*candidate);
            }
        }
        kept
    }

    /// Walks `level` greedily from `entry` to the nearest node it can reach.
    fn greedy(&self, query: &[f32], mut entry: u32, mut best: f32, level: usize) -> (u32, f32) {
        loop {
            let mut moved = false;
            for &n in self.links(entry, level) {
                let d = self.distance_to(query, n);
                if d < best {
                    best = d;
                    entry = n;
                    moved = true;
                }
            }
            if !moved {
                return (entry, best);
            }
        }
    }

    /// The best-first search of one level: up to `ef` nodes `wanted` lets through, nearest first.
    /// Every node is a waypoint whether wanted or not.
    fn search_level(
        &self,
        query: &[f32],
        entry: Scored,
        ef: usize,
        level: usize,
        wanted: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        let mut visited = self
            .visited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or(Visited {
                marks: Vec::new(),
                epoch: 0,
            });
        visited.reset(self.keys.len());
        let mut candidates: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef * 2);
        let mut results: BinaryHeap<Scored> = BinaryHeap::with_capacity(ef + 1);
        visited.first_visit(entry.node);
        candidates.push(Reverse(entry));
        if wanted(entry.node) {
            results.push(entry);
        }
        let mut bound = results.peek().map_or(f32::INFINITY, |r| r.distance);
        while let Some(Reverse(current)) = candidates.pop() {
            if current.distance > bound && results.len() >= ef {
                break;
            }
            let links = self.links(current.node, level);
            for (i, &n) in links.iter().enumerate() {
                if let Some(&next) = links.get(i + 1) {
                    self.prefetch(next);
                }
                if !visited.first_visit(n) {
                    continue;
                }
                let d = self.distance_to(query, n);
                if results.len() < ef || d < bound {
                    candidates.push(Reverse(Scored {
                        distance: d,
                        node: n,
                    }));
                    if wanted(n) {
                        results.push(Scored {
                            distance: d,
                            node: n,
                        });
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                    if let Some(worst) = results.peek() {
                        bound = worst.distance;
                    }
                }
            }
        }
        self.visited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(visited);
        results.into_sorted_vec()
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let start = node as usize * self.block + 1 + self.m0;
            if let Some(word) = self.data.get(start) {
                // SAFETY: a prefetch only hints the cache; the address is inside `data`.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        (word as *const u32).cast::<i8>(),
                        std::arch::x86_64::_MM_HINT_T0,
                    )
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = node;
    }

    /// A level drawn as hnswlib draws it: floor(-ln(U) / ln(m)).
    fn draw_level(&mut self) -> usize {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let bits = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64;
        let level = (-uniform.ln() / (self.params.m as f64).ln()).floor();
        (level as usize).min(16)
    }

    /// Writes the graph (`MOAHNSW1`, little-endian).
    pub fn save(&self, out: &mut impl Write) -> Result<(), HnswError> {
        let p = &self.params;
        out.write_all(b"MOAHNSW1")?;
        for v in [
            p.dimensions as u64,
            p.m as u64,
            p.ef_construction as u64,
            match p.metric {
                Metric::InnerProduct => 0,
                Metric::L2 => 1,
            },
            p.seed,
            self.rng,
            self.keys.len() as u64,
            self.max_level as u64,
            self.entry.map_or(u64::MAX, u64::from),
        ] {
            out.write_all(&v.to_le_bytes())?;
        }
        for word in &self.data {
            out.write_all(&word.to_le_bytes())?;
        }
        for (node, key) in self.keys.iter().enumerate() {
            out.write_all(&key.to_le_bytes())?;
            out.write_all(&[u8::from(self.deleted[node]), self.upper[node].len() as u8])?;
            for links in &self.upper[node] {
                out.write_all(&(links.len() as u32).to_le_bytes())?;
                for l in links {
                    out.write_all(&l.to_le_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// Reads a graph [`save`](Self::save) wrote with these `params`.
    pub fn load(params: Params, input: &mut impl Read) -> Result<Self, HnswError> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != b"MOAHNSW1" {
            return Err(HnswError::Format("bad magic".into()));
        }
        let mut word64 = || -> Result<u64, HnswError> {
            let mut b = [0u8; 8];
            input.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        };
        let header: Vec<u64> = (0..9).map(|_| word64()).collect::<Result<_, _>>()?;
        let metric = match header[3] {
            0 => Metric::InnerProduct,
            1 => Metric::L2,
            other => return Err(HnswError::Format(format!("metric {other}"))),
        };
        let stored = Params {
            dimensions: header[0] as usize,
            m: header[1] as usize,
            ef_construction: header[2] as usize,
            metric,
            seed: header[4],
        };
        if stored.dimensions != params.dimensions
            || stored.m != params.m
            || stored.metric != params.metric
        {
            return Err(HnswError::Format(format!(
                "the file holds {stored:?}, not {params:?}"
            )));
        }
        let mut graph = Hnsw::new(Params {
            ef_construction: params.ef_construction,
            ..stored
        });
        graph.rng = header[5];
        let nodes = header[6] as usize;
        graph.max_level = header[7] as usize;
        graph.entry = (header[8] != u64::MAX).then_some(header[8] as u32);
        // In pieces, so a large graph never sits in memory twice.
        let words = nodes * graph.block;
        graph.data = Vec::with_capacity(words);
        let mut bytes = vec![0u8; 1 << 20];
        while graph.data.len() < words {
            let take = ((words - graph.data.len()) * 4).min(bytes.len());
            input.read_exact(&mut bytes[..take])?;
            graph.data.extend(
                bytes[..take]
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        for node in 0..nodes {
            let mut head = [0u8; 10];
            input.read_exact(&mut head)?;
            let key = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
            let deleted = head[8] != 0;
            let mut levels = Vec::with_capacity(head[9] as usize);
            for _ in 0..head[9] {
                let mut count = [0u8; 4];
                input.read_exact(&mut count)?;
                let count = u32::from_le_bytes(count) as usize;
                if count > graph.params.m {
                    return Err(HnswError::Format(format!(
                        "{count} links on an upper level"
                    )));
                }
                let mut raw = vec![0u8; count * 4];
                input.read_exact(&mut raw)?;
                levels.push(
                    raw.chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                );
            }
            graph.keys.push(key);
            graph.deleted.push(deleted);
            graph.upper.push(levels);
            if !deleted {
                graph.slots.insert(key, node as u32);
            }
        }
        let bad_link = (0..nodes).any(|node| {
            let start = node * graph.block;
            let count = graph.data[start] as usize;
            count > graph.m0
                || graph.data[start + 1..start + 1 + count]
                    .iter()
                    .any(|&l| l as usize >= nodes)
                || graph.upper[node]
                    .iter()
                    .any(|links| links.iter().any(|&l| l as usize >= nodes))
        });
        if bad_link || graph.entry.is_some_and(|e| e as usize >= nodes) {
            return Err(HnswError::Format("a link points past the last node".into()));
        }
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors around a few hundred centres (as sentence embeddings cluster).
    fn clustered(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..200)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let v: Vec<f32> = c.iter().map(|x| x + 0.3 * next()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn exact(data: &[Vec<f32>], query: &[f32], k: usize, keep: impl Fn(usize) -> bool) -> Vec<u64> {
        let mut scored: Vec<(f32, usize)> = data
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(i, v)| {
                (
                    1.0 - v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(),
                    i,
                )
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        scored.into_iter().take(k).map(|(_, i)| i as u64).collect()
    }

    fn build(data: &[Vec<f32>]) -> Hnsw {
        let mut graph = Hnsw::new(Params::new(data[0].len(), Metric::InnerProduct));
        for (i, v) in data.iter().enumerate() {
            graph.insert(i as u64, v).expect("insert");
        }
        graph
    }

    fn recall(graph: &Hnsw, data: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
        let mut hits = 0;
        for q in queries {
            let want = exact(data, q, 10, |_| true);
            let got = graph.search(q, 10, ef, &|_| true).expect("search");
            hits += got.iter().filter(|(k, _)| want.contains(k)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    #[test]
    fn search_finds_the_true_neighbours() {
        let data = clustered(4000, 48, 7);
        let queries = clustered(100, 48, 99);
        let graph = build(&data);
        assert_eq!(graph.len(), 4000);
        let r = recall(&graph, &data, &queries, 64);
        assert!(r >= 0.95, "recall@10 at ef 64: {r}");
        // Distances come back ascending and as 1 - dot.
        let got = graph
            .search(&queries[0], 10, 64, &|_| true)
            .expect("search");
        assert!(got.windows(2).all(|w| w[0].1 <= w[1].1), "{got:?}");
        let first = &data[got[0].0 as usize];
        let dot: f32 = first.iter().zip(&queries[0]).map(|(a, b)| a * b).sum();
        assert!((got[0].1 - (1.0 - dot)).abs() < 1e-4);
    }

    #[test]
    fn predicates_apply_inside_the_walk_and_removed_items_never_return() {
        let data = clustered(3000, 32, 3);
        let mut graph = build(&data);
        let query = &clustered(1, 32, 42)[0];
        // One key in ten: the filtered answer is the exact filtered top 10.
        let keep = |k: u64| k % 10 == 3;
        let got = graph.search(query, 10, 200, &keep).expect("search");
        let want = exact(&data, query, 10, |i| keep(i as u64));
        let hits = got.iter().filter(|(k, _)| want.contains(k)).count();
        assert!(got.iter().all(|(k, _)| keep(*k)), "{got:?}");
        assert!(hits >= 9, "{hits} of 10");

        let nearest = graph.search(query, 1, 64, &|_| true).expect("search")[0].0;
        assert!(graph.remove(nearest));
        assert!(!graph.contains(nearest));
        let after = graph.search(query, 10, 64, &|_| true).expect("search");
        assert!(after.iter().all(|(k, _)| *k != nearest));
        assert_eq!(graph.len(), 2999);
        // Re-adding a key gives it its new vector.
        let moved: Vec<f32> = query.clone();
        graph.insert(nearest, &moved).expect("insert");
        let back = graph.search(query, 1, 64, &|_| true).expect("search");
        assert_eq!(back[0].0, nearest);
        assert!(back[0].1.abs() < 1e-4);
        let mut out = vec![0.0; 32];
        assert!(graph.get(nearest, &mut out));
        assert_eq!(out, moved);
        assert!(graph.insert(1, &[1.0; 3]).is_err(), "wrong dimensions");
    }

    #[test]
    fn a_saved_graph_loads_and_answers_the_same() {
        let data = clustered(1500, 24, 11);
        let mut graph = build(&data);
        graph.remove(5);
        let mut bytes = Vec::new();
        graph.save(&mut bytes).expect("save");
        let loaded = Hnsw::load(*graph.params(), &mut bytes.as_slice()).expect("load");
        assert_eq!(loaded.len(), graph.len());
        assert!(!loaded.contains(5));
        for q in clustered(20, 24, 5) {
            assert_eq!(
                graph.search(&q, 10, 50, &|_| true).expect("search"),
                loaded.search(&q, 10, 50, &|_| true).expect("search")
            );
        }
        let compacted = graph.compacted().expect("compact");
        assert_eq!((compacted.len(), compacted.removed()), (1499, 0));
        assert_eq!(graph.removed(), 1);
        assert!(!compacted.contains(5));
        let q = &clustered(1, 24, 8)[0];
        let want = exact(&data, q, 10, |i| i != 5);
        let got = compacted.search(q, 10, 64, &|_| true).expect("search");
        assert!(got.iter().filter(|(k, _)| want.contains(k)).count() >= 9);
        let other = Params::new(25, Metric::InnerProduct);
        assert!(Hnsw::load(other, &mut bytes.as_slice()).is_err());
        assert!(Hnsw::load(*graph.params(), &mut &bytes[..bytes.len() / 2]).is_err());
    }
}
