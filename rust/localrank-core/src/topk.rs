//! A bounded top-k selection: a binary min-heap of at most `k` (score, index) pairs.
//!
//! "Better" means a higher score, and for equal scores the lower index. The heap's root is the
//! worst kept candidate, so a new row costs one comparison unless it beats the root.

/// A kept candidate: its score and row index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub score: f32,
    pub index: usize,
}

impl Candidate {
    /// Whether `self` ranks strictly ahead of `other`.
    #[inline(always)]
    pub fn beats(&self, other: &Candidate) -> bool {
        self.score > other.score || (self.score == other.score && self.index < other.index)
    }
}

/// The best `k` candidates seen so far.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: Vec<Candidate>,
}

impl TopK {
    /// An empty selection keeping at most `k` candidates; `capacity_hint` bounds the allocation.
    pub fn new(k: usize, capacity_hint: usize) -> Self {
        TopK {
            k,
            heap: Vec::with_capacity(k.min(capacity_hint)),
        }
    }

    /// How many candidates are kept.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is kept yet.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Offer a candidate. Order of arrival does not matter: ties are broken by index.
    #[inline(always)]
    pub fn push(&mut self, score: f32, index: usize) {
        if self.heap.len() < self.k {
            self.heap.push(Candidate { score, index });
            self.sift_up(self.heap.len() - 1);
        } else if self.k > 0 {
            let cand = Candidate { score, index };
            if cand.beats(&self.heap[0]) {
                self.heap[0] = cand;
                self.sift_down(0);
            }
        }
    }

    /// The score a new row must beat to enter, once the selection is full.
    #[inline(always)]
    pub fn threshold(&self) -> Option<f32> {
        if self.heap.len() == self.k {
            self.heap.first().map(|c| c.score)
        } else {
            None
        }
    }

    /// A cheap pre-filter: a candidate scoring below this can never enter (`-inf` until the
    /// selection is full). Candidates at or above it still go through [`TopK::push`], which
    /// breaks ties by index.
    #[inline(always)]
    pub fn entry_floor(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.first().map_or(f32::INFINITY, |c| c.score)
        }
    }

    /// Fold another selection (from a different row range) into this one.
    pub fn merge(&mut self, other: TopK) {
        for c in other.heap {
            self.push(c.score, c.index);
        }
    }

    /// The kept candidates, best first.
    pub fn into_sorted(mut self) -> Vec<Candidate> {
        self.heap.sort_unstable_by(|a, b| {
            if a.beats(b) {
                std::cmp::Ordering::Less
            } else if b.beats(a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        self.heap
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            // The root holds the worst: a child that is worse than its parent moves up.
            if self.heap[parent].beats(&self.heap[i]) {
                self.heap.swap(parent, i);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            let r = l + 1;
            let mut worst = i;
            if l < n && self.heap[worst].beats(&self.heap[l]) {
                worst = l;
            }
            if r < n && self.heap[worst].beats(&self.heap[r]) {
                worst = r;
            }
            if worst == i {
                break;
            }
            self.heap.swap(i, worst);
            i = worst;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_k_with_ties_to_lower_index() {
        let scores = [1.0, 3.0, 3.0, 2.0, 3.0, 0.5];
        let mut t = TopK::new(3, scores.len());
        for (i, s) in scores.iter().enumerate() {
            t.push(*s, i);
        }
        let got: Vec<usize> = t.into_sorted().iter().map(|c| c.index).collect();
        assert_eq!(got, vec![1, 2, 4]);
    }

    #[test]
    fn merge_matches_single_pass() {
        let scores: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32).collect();
        let mut whole = TopK::new(7, 100);
        for (i, s) in scores.iter().enumerate() {
            whole.push(*s, i);
        }
        let mut a = TopK::new(7, 100);
        let mut b = TopK::new(7, 100);
        for (i, s) in scores.iter().enumerate() {
            if i < 50 {
                a.push(*s, i)
            } else {
                b.push(*s, i)
            }
        }
        b.merge(a);
        assert_eq!(whole.into_sorted(), b.into_sorted());
    }

    #[test]
    fn k_zero_keeps_nothing() {
        let mut t = TopK::new(0, 10);
        t.push(1.0, 0);
        assert!(t.is_empty());
    }
}
