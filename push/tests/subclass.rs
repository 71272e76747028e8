//! Sub-class planning against a model: balanced within one member, never
//! over size, deterministic, and every move reported.

use std::collections::BTreeMap;

use proptest::prelude::*;
use room_core::Uin;
use room_push::{SubclassId, SubclassPlanner};

#[derive(Debug, Clone)]
enum Op {
    Join(u64),
    Leave(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![3 => (0u64..200).prop_map(Op::Join), 1 => (0u64..200).prop_map(Op::Leave)],
        0..600,
    )
}

/// Runs `ops`, checking the invariants after each; returns the final assignment.
fn run(size: u32, initial: usize, ops: &[Op]) -> Result<BTreeMap<Uin, SubclassId>, TestCaseError> {
    let mut planner = SubclassPlanner::with_initial(size, initial).expect("valid size");
    // The model: who is where, updated only from what the planner reports.
    let mut model: BTreeMap<Uin, SubclassId> = BTreeMap::new();
    for op in ops {
        match *op {
            Op::Join(u) => {
                let (s, moves) = planner.join(Uin(u)).expect("fits");
                if let Some(before) = model.get(&Uin(u)) {
                    prop_assert_eq!(*before, s, "a member already placed keeps its sub-class");
                    prop_assert!(moves.is_empty());
                }
                model.insert(Uin(u), s);
                for m in moves {
                    prop_assert_eq!(model.get(&m.uin), Some(&m.from), "move of {:?} from the wrong place", m.uin);
                    model.insert(m.uin, m.to);
                }
            }
            Op::Leave(u) => {
                model.remove(&Uin(u));
                if let Some(m) = planner.leave(Uin(u)) {
                    prop_assert_eq!(model.get(&m.uin), Some(&m.from));
                    model.insert(m.uin, m.to);
                }
            }
        }
        // The planner agrees with the model.
        for (u, s) in &model {
            prop_assert_eq!(planner.subclass_of(*u), Some(*s));
        }
        prop_assert_eq!(planner.len(), model.len());
        let sizes = planner.sizes();
        let mut counted = vec![0u32; sizes.len()];
        for s in model.values() {
            counted[usize::from(s.0)] += 1;
        }
        prop_assert_eq!(&counted, &sizes);
        let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        prop_assert!(max - min <= 1, "unbalanced: {:?}", sizes);
        prop_assert!(max <= size, "a sub-class over size {}: {:?}", size, sizes);
    }
    Ok(model)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn balanced_bounded_and_reported(size in 1u32..40, initial in 1usize..4, ops in ops()) {
        run(size, initial, &ops)?;
    }

    #[test]
    fn deterministic(size in 1u32..40, ops in ops()) {
        prop_assert_eq!(run(size, 1, &ops)?, run(size, 1, &ops)?);
    }
}

#[test]
fn a_class_sized_up_front_fills_without_moves() {
    let mut planner = SubclassPlanner::with_initial(500, 120).expect("valid");
    for u in 0..60_000 {
        let (_, moves) = planner.join(Uin(u)).expect("fits");
        assert!(moves.is_empty());
    }
    assert!(planner.sizes().iter().all(|&n| n == 500));
}

#[test]
fn zero_size_is_refused() {
    assert!(SubclassPlanner::new(0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Placing members anywhere (a saved plan, or a stale one) and then
    /// levelling gives a plan within the rules, and the moves reported take
    /// each member from where it was to where it is.
    #[test]
    fn placed_then_levelled_is_balanced_and_reported(
        size in 1u32..8,
        placed in proptest::collection::btree_map(0u64..100, 0u16..12, 0..60),
    ) {
        let mut planner = SubclassPlanner::new(size).expect("valid size");
        for (&u, &s) in &placed {
            planner.place(Uin(u), SubclassId(s)).expect("in range");
            prop_assert_eq!(planner.subclass_of(Uin(u)), Some(SubclassId(s)), "placed as it is");
        }
        let mut model: BTreeMap<Uin, SubclassId> = placed.iter().map(|(&u, &s)| (Uin(u), SubclassId(s))).collect();
        for m in planner.level() {
            prop_assert_eq!(model.get(&m.uin), Some(&m.from));
            model.insert(m.uin, m.to);
        }
        for (u, s) in &model {
            prop_assert_eq!(planner.subclass_of(*u), Some(*s));
        }
        let sizes = planner.sizes();
        let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        prop_assert!(max - min <= 1, "unbalanced: {:?}", sizes);
        prop_assert!(max <= size, "a sub-class over size {}: {:?}", size, sizes);
    }
}

#[test]
fn a_balanced_plan_placed_again_needs_no_moves() {
    let mut first = SubclassPlanner::new(3).expect("valid");
    for u in 0..10 {
        first.join(Uin(u)).expect("fits");
    }
    let mut second = SubclassPlanner::new(3).expect("valid");
    for u in 0..10 {
        second.place(Uin(u), first.subclass_of(Uin(u)).expect("placed")).expect("in range");
    }
    assert_eq!(second.level(), vec![]);
    assert_eq!(second.sizes(), first.sizes());
    // Placing a member again moves it, without levelling until asked.
    second.place(Uin(0), SubclassId(9)).expect("in range");
    assert_eq!(second.subclass_of(Uin(0)), Some(SubclassId(9)));
    assert_eq!(second.sizes().len(), 10, "sub-classes up to 9 opened");
    assert!(!second.level().is_empty());
    assert_eq!(
        second.place(Uin(1), SubclassId(u16::MAX)),
        Err(room_push::SubclassError::TooMany { max: room_push::subclass::MAX_SUBCLASSES })
    );
}
