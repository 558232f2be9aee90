//! The leader's assignment rule: deterministic, even, eligible.

use std::collections::BTreeMap;

use uuid::Uuid;

/// A live worker and the consumers it runs.
#[derive(Debug, Clone)]
pub(crate) struct LiveWorker {
    pub(crate) id: Uuid,
    pub(crate) consumers: Vec<String>,
}

/// Assigns each consumer to the least-loaded live worker that runs it (ties: lowest id).
/// Consumers are taken in name order, so with identical consumer lists the result is
/// round-robin and even (max − min ≤ 1), and the same inputs always give the same output:
/// a stable membership causes no moves.
pub(crate) fn assign(consumers: &[String], live: &[LiveWorker]) -> BTreeMap<String, Option<Uuid>> {
    let mut workers: Vec<&LiveWorker> = live.iter().collect();
    workers.sort_by_key(|w| w.id);
    let mut load: BTreeMap<Uuid, usize> = workers.iter().map(|w| (w.id, 0)).collect();
    let mut names: Vec<&String> = consumers.iter().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|c| {
            let chosen = workers
                .iter()
                .filter(|w| w.consumers.contains(c))
                .min_by_key(|w| (load[&w.id], w.id))
                .map(|w| w.id);
            if let Some(id) = chosen {
                *load.get_mut(&id).expect("known worker") += 1;
            }
            (c.clone(), chosen)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(n: u128, consumers: &[&str]) -> Vec<LiveWorker> {
        (1..=n)
            .map(|i| LiveWorker {
                id: Uuid::from_u128(i),
                consumers: consumers.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect()
    }

    fn loads(a: &BTreeMap<String, Option<Uuid>>) -> Vec<usize> {
        let mut m: BTreeMap<Uuid, usize> = BTreeMap::new();
        for w in a.values().flatten() {
            *m.entry(*w).or_default() += 1;
        }
        m.into_values().collect()
    }

    #[test]
    fn even_and_stable() {
        let names: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        for n in 1..=5 {
            let live = workers(n, &refs);
            let a = assign(&names, &live);
            assert!(a.values().all(Option::is_some));
            let l = loads(&a);
            assert!(
                l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
                "{n} workers: {l:?}"
            );
            assert_eq!(assign(&names, &live), a, "deterministic");
        }
    }

    #[test]
    fn only_eligible_workers_and_none_without_one() {
        let mut live = workers(2, &["a"]);
        live[1].consumers.push("b".into());
        let a = assign(&["a".into(), "b".into(), "z".into()], &live);
        assert_eq!(a["b"], Some(Uuid::from_u128(2)));
        assert_eq!(a["a"], Some(Uuid::from_u128(1)));
        assert_eq!(a["z"], None);
        assert!(assign(&["a".into()], &[]).values().all(Option::is_none));
    }
}
