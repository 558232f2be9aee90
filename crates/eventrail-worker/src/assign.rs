//! The leader's assignment rule: sticky, balanced, eligible, deterministic.
//!
//! Every move of a consumer rolls back its batch in flight and costs a handover, so the rule
//! moves as little as it can: it keeps every current assignment whose worker is live and still
//! runs the consumer, places the consumers that have no such worker, then moves consumers from
//! the most loaded worker to an eligible least loaded one while the two differ by two or more.
//! With identical consumer lists on every worker that ends with max − min ≤ 1 after the fewest
//! possible moves (the tests check the lower bound). With different lists it ends with no
//! consumer that could move to another worker that runs it and make the spread smaller, but the
//! number of moves is not always the least possible (an exact answer is a search; deployments
//! where every worker runs the same consumers are the common case).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

/// A live worker and the consumers it runs.
#[derive(Debug, Clone)]
pub(crate) struct LiveWorker {
    pub(crate) id: Uuid,
    pub(crate) consumers: Vec<String>,
}

/// The assignment the leader wants: for each consumer (deduplicated), the live worker that runs
/// it, or `None` when no live worker runs it.
///
/// `current` is the assignment in place. The result is a function of the inputs only (ties
/// are broken by worker id, then consumer name), so a stable membership causes no moves.
pub(crate) fn assign(
    consumers: &[String],
    live: &[LiveWorker],
    current: &HashMap<String, Option<Uuid>>,
) -> BTreeMap<String, Option<Uuid>> {
    let eligible: BTreeMap<Uuid, BTreeSet<&str>> = live
        .iter()
        .map(|w| (w.id, w.consumers.iter().map(String::as_str).collect()))
        .collect();
    let runs = |worker: &Uuid, consumer: &str| {
        eligible
            .get(worker)
            .is_some_and(|set| set.contains(consumer))
    };
    let names: BTreeSet<&str> = consumers.iter().map(String::as_str).collect();
    let mut load: BTreeMap<Uuid, usize> = eligible.keys().map(|id| (*id, 0)).collect();
    let mut wanted: BTreeMap<&str, Option<Uuid>> = BTreeMap::new();
    // Consumers that stay where they are unless balancing needs them elsewhere; any other
    // consumer moves anyway, so moving it again during balancing costs nothing.
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    for &name in &names {
        if let Some(Some(worker)) = current.get(name)
            && runs(worker, name)
        {
            wanted.insert(name, Some(*worker));
            kept.insert(name);
            *load.entry(*worker).or_default() += 1;
        }
    }
    // The most constrained consumers first: they have the fewest places to go.
    let mut orphans: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !kept.contains(n))
        .collect();
    orphans.sort_by_key(|name| (eligible.keys().filter(|id| runs(id, name)).count(), *name));
    for name in orphans {
        let chosen = load
            .iter()
            .filter(|(id, _)| runs(id, name))
            .min_by_key(|(id, n)| (**n, **id))
            .map(|(id, _)| *id);
        if let Some(id) = chosen {
            *load.entry(id).or_default() += 1;
        }
        wanted.insert(name, chosen);
    }
    // Each move lowers the sum of squared loads, so this ends (after at most a few passes over
    // the consumers per move).
    while let Some((name, from, to)) = best_move(&wanted, &load, &kept, &runs) {
        wanted.insert(name, Some(to));
        kept.remove(name);
        if let Some(n) = load.get_mut(&from) {
            *n -= 1;
        }
        *load.entry(to).or_default() += 1;
    }
    wanted
        .into_iter()
        .map(|(name, worker)| (name.to_owned(), worker))
        .collect()
}

/// The next balancing move: from a worker with the highest load that has one, to the least
/// loaded worker that runs the consumer, when the two differ by two or more. A consumer that
/// moves anyway (newly placed) is preferred over one that would stay; then the lowest name.
fn best_move<'a>(
    wanted: &BTreeMap<&'a str, Option<Uuid>>,
    load: &BTreeMap<Uuid, usize>,
    kept: &BTreeSet<&'a str>,
    runs: &impl Fn(&Uuid, &str) -> bool,
) -> Option<(&'a str, Uuid, Uuid)> {
    let mut by_load: Vec<(usize, Uuid)> = load.iter().map(|(id, n)| (*n, *id)).collect();
    // Most loaded first; ties by id.
    by_load.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (from_load, from) in by_load {
        let mut best: Option<(bool, usize, Uuid, &'a str)> = None;
        for (&name, worker) in wanted {
            if *worker != Some(from) {
                continue;
            }
            let target = load
                .iter()
                .filter(|(id, n)| **id != from && **n + 2 <= from_load && runs(id, name))
                .min_by_key(|(id, n)| (**n, **id));
            if let Some((to, to_load)) = target {
                // Prefer a newly placed consumer, then the least loaded target, then names.
                let candidate = (kept.contains(name), *to_load, *to, name);
                if best.is_none_or(|b| candidate < b) {
                    best = Some(candidate);
                }
            }
        }
        if let Some((_, _, to, name)) = best {
            return Some((name, from, to));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn workers(ids: impl IntoIterator<Item = u128>, consumers: &[&str]) -> Vec<LiveWorker> {
        ids.into_iter()
            .map(|i| LiveWorker {
                id: Uuid::from_u128(i),
                consumers: consumers.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    fn loads(a: &BTreeMap<String, Option<Uuid>>, live: &[LiveWorker]) -> BTreeMap<Uuid, usize> {
        let mut m: BTreeMap<Uuid, usize> = live.iter().map(|w| (w.id, 0)).collect();
        for w in a.values().flatten() {
            *m.entry(*w).or_default() += 1;
        }
        m
    }

    fn moves(
        current: &HashMap<String, Option<Uuid>>,
        wanted: &BTreeMap<String, Option<Uuid>>,
    ) -> usize {
        wanted
            .iter()
            .filter(|(c, w)| current.get(*c).copied().flatten() != **w)
            .count()
    }

    /// The fewest moves any assignment with max − min ≤ 1 needs when every worker runs every
    /// consumer: each consumer without a live worker moves, and each worker sheds what it keeps
    /// above its target. Targets are ⌈n/w⌉ for `n mod w` workers and ⌊n/w⌋ for the others;
    /// giving the higher targets to the workers that keep the most is the cheapest choice.
    fn lower_bound(
        consumers: &[String],
        live: &[LiveWorker],
        current: &HashMap<String, Option<Uuid>>,
    ) -> usize {
        let ids: BTreeSet<Uuid> = live.iter().map(|w| w.id).collect();
        if ids.is_empty() {
            return current.values().filter(|w| w.is_some()).count();
        }
        let mut kept: BTreeMap<Uuid, usize> = ids.iter().map(|id| (*id, 0)).collect();
        let mut orphans = 0;
        for c in consumers {
            match current.get(c).copied().flatten() {
                Some(w) if ids.contains(&w) => *kept.entry(w).or_default() += 1,
                _ => orphans += 1,
            }
        }
        let (n, w) = (consumers.len(), ids.len());
        let mut kept: Vec<usize> = kept.into_values().collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        let excess: usize = kept
            .iter()
            .enumerate()
            .map(|(i, k)| k.saturating_sub(n / w + usize::from(i < n % w)))
            .sum();
        orphans + excess
    }

    /// For every consumer: no other live worker that runs it is two or more below its worker.
    fn locally_balanced(a: &BTreeMap<String, Option<Uuid>>, live: &[LiveWorker]) -> bool {
        let l = loads(a, live);
        a.iter().all(|(c, w)| match w {
            Some(w) => live
                .iter()
                .filter(|v| v.consumers.contains(c))
                .all(|v| l[&v.id] + 1 >= l[w]),
            None => !live.iter().any(|v| v.consumers.contains(c)),
        })
    }

    #[test]
    fn even_stable_and_deterministic() {
        let names = names(7);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        for n in 1..=5 {
            let live = workers(1..=n, &refs);
            let a = assign(&names, &live, &HashMap::new());
            assert!(a.values().all(Option::is_some));
            let l: Vec<usize> = loads(&a, &live).into_values().collect();
            assert!(
                l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
                "{n} workers: {l:?}"
            );
            assert_eq!(assign(&names, &live, &HashMap::new()), a, "deterministic");
            let current: HashMap<_, _> = a.clone().into_iter().collect();
            assert_eq!(assign(&names, &live, &current), a, "no moves when stable");
        }
    }

    #[test]
    fn a_join_moves_one_of_six_and_a_leave_moves_only_the_leavers() {
        let names = names(6);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let three = assign(&names, &workers(1..=3, &refs), &HashMap::new());
        let current: HashMap<_, _> = three.clone().into_iter().collect();
        let four_workers = workers(1..=4, &refs);
        let four = assign(&names, &four_workers, &current);
        assert_eq!(moves(&current, &four), 1);
        assert_eq!(loads(&four, &four_workers)[&Uuid::from_u128(4)], 1);
        let current: HashMap<_, _> = four.clone().into_iter().collect();
        let without_two = workers([1, 3, 4], &refs);
        let after = assign(&names, &without_two, &current);
        let had: usize = four
            .values()
            .filter(|w| **w == Some(Uuid::from_u128(2)))
            .count();
        assert_eq!(moves(&current, &after), had, "only the leaver's consumers");
    }

    #[test]
    fn only_eligible_workers_and_none_without_one() {
        let mut live = workers(1..=2, &["a"]);
        live[1].consumers.push("b".into());
        let a = assign(
            &["a".into(), "b".into(), "z".into()],
            &live,
            &HashMap::new(),
        );
        assert_eq!(a["b"], Some(Uuid::from_u128(2)));
        assert_eq!(a["a"], Some(Uuid::from_u128(1)));
        assert_eq!(a["z"], None);
        assert!(
            assign(&["a".into()], &[], &HashMap::new())
                .values()
                .all(Option::is_none)
        );
        // A current worker that no longer runs the consumer gives it up.
        let current = HashMap::from([("b".to_owned(), Some(Uuid::from_u128(1)))]);
        assert_eq!(
            assign(&["b".into()], &live, &current)["b"],
            Some(Uuid::from_u128(2))
        );
    }

    /// A current assignment: each consumer on one of `ids` (some no longer live) or none.
    fn scenario() -> impl Strategy<Value = (usize, Vec<u128>, Vec<Option<u128>>)> {
        (1usize..=12, 1usize..=6).prop_flat_map(|(consumers, workers)| {
            (
                Just(consumers),
                // Live worker ids out of 1..=8; the others are dead.
                proptest::sample::subsequence((1..=8u128).collect::<Vec<_>>(), workers),
                proptest::collection::vec(proptest::option::of(1..=8u128), consumers),
            )
        })
    }

    proptest! {
        #[test]
        fn identical_lists_fewest_moves_within_one(
            (n, ids, current) in scenario()
        ) {
            let names = names(n);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let live = workers(ids, &refs);
            let current: HashMap<String, Option<Uuid>> = names
                .iter()
                .cloned()
                .zip(current.into_iter().map(|w| w.map(Uuid::from_u128)))
                .collect();
            let a = assign(&names, &live, &current);
            let l: Vec<usize> = loads(&a, &live).into_values().collect();
            prop_assert!(l.iter().max().unwrap() - l.iter().min().unwrap() <= 1, "{:?}", l);
            prop_assert!(a.values().all(Option::is_some));
            prop_assert_eq!(moves(&current, &a), lower_bound(&names, &live, &current));
            prop_assert_eq!(assign(&names, &live, &current), a.clone(), "deterministic");
            let settled: HashMap<_, _> = a.clone().into_iter().collect();
            prop_assert_eq!(assign(&names, &live, &settled), a, "stable");
        }

        #[test]
        fn different_lists_respect_eligibility_and_balance_locally(
            (n, ids, current) in scenario(),
            runs in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 12), 8),
        ) {
            let names = names(n);
            let live: Vec<LiveWorker> = ids
                .iter()
                .map(|id| LiveWorker {
                    id: Uuid::from_u128(*id),
                    consumers: names
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| runs[usize::try_from(*id).unwrap() - 1][*i])
                        .map(|(_, c)| c.clone())
                        .collect(),
                })
                .collect();
            let current: HashMap<String, Option<Uuid>> = names
                .iter()
                .cloned()
                .zip(current.into_iter().map(|w| w.map(Uuid::from_u128)))
                .collect();
            let a = assign(&names, &live, &current);
            for (c, w) in &a {
                if let Some(w) = w {
                    prop_assert!(live.iter().any(|v| v.id == *w && v.consumers.contains(c)));
                }
            }
            prop_assert!(locally_balanced(&a, &live), "{:?}", a);
            // What is kept never moves unless balancing needs it: every consumer whose worker
            // is live and eligible stays when that worker is not above any other eligible one.
            let settled: HashMap<_, _> = a.clone().into_iter().collect();
            prop_assert_eq!(assign(&names, &live, &settled), a, "stable");
        }
    }
}
