//! What mlx5's hardware steering accepts: the checks of the software
//! eSwitch's [`Profile::Mlx5`](super::Profile::Mlx5).
//!
//! The reference is DPDK 22.11 (the LTS a BlueField's DOCA and Debian ship,
//! read at v22.11 and v22.11.11) with `dv_flow_en=2` (hardware steering,
//! the template API) on a BlueField-2/3 in switchdev mode. Each check
//! names the driver function, or the section of `doc/guides/nics/mlx5.rst`,
//! that it follows; `hw.c` is `drivers/net/mlx5/mlx5_flow_hw.c`, `dr_*`
//! are `drivers/net/mlx5/hws/mlx5dr_*.c`. Where the driver does not refuse
//! but would do something else than rte_flow says (a second VLAN item is
//! silently merged into the first, a table made before the port started
//! lands in the root table), the profile refuses, so that CI says what
//! the card would get wrong.
//!
//! How the card matches (`dr_definer.c`, mirrored by the eSwitch's
//! matching under this profile): an ETH item's `type` is the EtherType
//! after the VLAN tags, `has_vlan` asks for an outer 802.1Q (0x8100) tag or
//! none; a VLAN item asks for an outer 802.1Q tag (an 802.1ad one when
//! `has_more_vlan` is 1), its `tci`, and its `inner_type` is again the
//! EtherType after the tags.

use super::super::OffloadError;
use super::super::rule::{Action, ActionKind, Item, Rule};
use super::super::template::{ActionsTemplate, TableSpec};

/// `rte_flow_create` with `dv_flow_en=2` (`mlx5_flow_create`, mlx5_flow.c:
/// "Flow non-Q creation not supported", ENOTSUP): only the queue-based
/// template API inserts rules.
pub(super) const SYNC_REFUSED: OffloadError = OffloadError::Unsupported(
    "rte_flow_create with dv_flow_en=2 (mlx5_flow_create: Flow non-Q creation not supported)",
);

/// A template table made before the ports started (hw.c
/// `flow_hw_translate_group`: transfer groups move one level down, behind
/// mlx5's own root rules, only once the proxy port has started, where
/// `mlx5_traffic_enable_hws` sets `fdb_def_rule`; a table made earlier
/// lands in the root table and breaks at start).
pub(super) const TABLE_BEFORE_START: OffloadError = OffloadError::Invalid(
    "template table before the port started (hw.c flow_hw_translate_group: it would land in the root table)",
);

/// The checks of a template table: its pattern template, each actions
/// template against it, and the group's limits.
pub(super) fn check_table(spec: &TableSpec) -> Result<(), OffloadError> {
    if !spec.attr.transfer {
        return Err(OffloadError::Unsupported(
            "only transfer rules (the eSwitch's FDB) are used on a BlueField",
        ));
    }
    check_pattern(&spec.pattern)?;
    for t in &spec.actions {
        check_actions(t, spec.attr.group)?;
        check_pop_has_vlan_match(t, &spec.pattern)?;
    }
    Ok(())
}

/// Item limits (hw.c `flow_hw_pattern_validate`, `dr_definer.c`,
/// mlx5.rst "HW steering" and "Limitations").
fn check_pattern(pattern: &[Item]) -> Result<(), OffloadError> {
    let vlans = pattern
        .iter()
        .filter(|i| matches!(i, Item::Vlan(_)))
        .count();
    if vlans > 1 {
        // mlx5.rst: "A flow pattern with 2 sequential VLAN items is not
        // supported." In hardware steering the second item overwrites the
        // first one's fields (dr_definer.c mlx5dr_definer_conv_item_vlan
        // has no second-tag fields): it would match the wrong tag, with no
        // error. Refused here.
        return Err(OffloadError::Unsupported(
            "two VLAN items (mlx5.rst: a pattern with 2 sequential VLAN items is not supported)",
        ));
    }
    let v6_tuple = pattern
        .iter()
        .any(|i| matches!(i, Item::Ipv6(s) if s.mask.src != 0 && s.mask.dst != 0))
        && pattern.iter().any(|i| match i {
            Item::Tcp(s) => s.mask.src_port != 0 || s.mask.dst_port != 0,
            Item::Udp(s) => s.mask.src_port != 0 || s.mask.dst_port != 0,
            _ => false,
        });
    if v6_tuple {
        // mlx5.rst, "HW steering": "IPv6 5-tuple matching is not
        // supported" (both addresses and the ports do not fit one match
        // definer in 22.11).
        return Err(OffloadError::Unsupported(
            "IPv6 5-tuple (mlx5.rst, HW steering: IPv6 5-tuple matching is not supported)",
        ));
    }
    Ok(())
}

/// mlx5.rst, "VLAN pop offload command": rules that pop a VLAN without
/// matching one are not supported.
fn check_pop_has_vlan_match(t: &ActionsTemplate, pattern: &[Item]) -> Result<(), OffloadError> {
    let pops = t.contains(&ActionKind::OfPopVlan);
    let matches_vlan = pattern.iter().any(|i| match i {
        Item::Vlan(_) => true,
        Item::Eth(s) => s.mask.has_vlan,
        _ => false,
    });
    if pops && !matches_vlan {
        return Err(OffloadError::Unsupported(
            "OF_POP_VLAN without a VLAN match (mlx5.rst: VLAN pop offload command)",
        ));
    }
    Ok(())
}

/// The steps of the eSwitch's (FDB) action order, `dr_action.c`
/// `action_order_arr[MLX5DR_TABLE_TYPE_FDB]`: decap, pop, pop, counter
/// (COUNT and AGE share it), meter, connection tracking, push, push,
/// modify header, encap, one fate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Step {
    Decap,
    Pop,
    Counter,
    Push,
    Modify,
    Encap,
    Fate,
}

/// How often each step may come, in order (`action_order_arr`).
const ORDER: [(Step, usize); 7] = [
    (Step::Decap, 1),
    (Step::Pop, 2),
    (Step::Counter, 1),
    (Step::Push, 2),
    (Step::Modify, 1),
    (Step::Encap, 1),
    (Step::Fate, 1),
];

/// The checks of an actions template in `group`.
pub(super) fn check_actions(t: &[ActionKind], group: u32) -> Result<(), OffloadError> {
    use ActionKind as K;
    let count = |k: K| t.iter().filter(|x| **x == k).count();
    // hw.c flow_hw_validate_action_count: "duplicate count actions set"
    // (EINVAL), also for COUNT with an indirect COUNT.
    if count(K::Count) + count(K::SharedCount) > 1 {
        return Err(OffloadError::Invalid(
            "two counters in one rule (hw.c flow_hw_validate_action_count: duplicate count actions set)",
        ));
    }
    // hw.c flow_hw_validate_action_age: "duplicate AGE actions set".
    if count(K::Age) > 1 {
        return Err(OffloadError::Invalid(
            "two AGE actions (hw.c flow_hw_validate_action_age: duplicate AGE actions set)",
        ));
    }
    // AGE takes the rule's counter; with an indirect COUNT that is the
    // shared one, and its age state is wrong (mlx5.rst, "Age action",
    // HW steering: using the same indirect count action combined with
    // multiple age actions in different flows may cause a wrong age state).
    if count(K::Age) > 0 && count(K::SharedCount) > 0 {
        return Err(OffloadError::Unsupported(
            "AGE with a shared counter (mlx5.rst, Age action: wrong age state)",
        ));
    }
    if count(K::VxlanDecap) > 0 && count(K::VxlanEncap) > 0 {
        // One reformat per template in 22.11 (hw.c
        // flow_hw_dr_actions_template_create keeps a single
        // `reformat_off`; decap then encap builds a broken template).
        return Err(OffloadError::Unsupported(
            "VXLAN decap and encap in one rule (hw.c: one reformat action per template)",
        ));
    }
    let fates: usize = [K::RepresentedPort, K::PortRepresentor, K::Jump, K::Drop]
        .iter()
        .map(|k| count(*k))
        .sum();
    if fates != 1 {
        return Err(OffloadError::Invalid(
            "a rule needs exactly one fate action (dr_action.c mlx5dr_action_check_combo: one fate)",
        ));
    }
    if count(K::PortRepresentor) > 0 {
        // Not in hw.c flow_hw_actions_validate's list in 22.11 ("action
        // not supported in template API", ENOTSUP; added in 23.11). A
        // packet no rule takes goes to the eSwitch manager and on to the
        // representor it came from: a miss is how software gets it.
        return Err(OffloadError::Unsupported(
            "PORT_REPRESENTOR (hw.c: action not supported in template API in 22.11; let the packet miss)",
        ));
    }
    if group == 0 && t.iter().any(|k| !matches!(k, K::Jump | K::Drop)) {
        // The root table (hw.c flow_hw_represented_port_compile:
        // "represented_port action cannot be used on group 0"; "Counter
        // action on root table is not supported in HW steering mode";
        // "Age action on root table is not supported in HW steering
        // mode"): group 0 only jumps.
        return Err(OffloadError::Unsupported(
            "group 0 only jumps (hw.c: represented_port, COUNT and AGE are refused on the root table)",
        ));
    }
    let mut steps = heapless::Vec::<Step, 16>::new();
    let mut i = 0;
    while let Some(k) = t.get(i) {
        let step = match k {
            K::VxlanDecap => Step::Decap,
            K::OfPopVlan => Step::Pop,
            K::Count | K::SharedCount | K::Age => Step::Counter,
            K::OfPushVlan => {
                // hw.c flow_hw_validate_action_push_vlan: "OF_PUSH_VLAN:
                // invalid actions order": OF_SET_VLAN_VID must follow at
                // once (then OF_SET_VLAN_PCP, optionally); they are one
                // push.
                if t.get(i + 1) != Some(&K::OfSetVlanVid) {
                    return Err(OffloadError::Invalid(
                        "OF_PUSH_VLAN not followed by OF_SET_VLAN_VID (hw.c flow_hw_validate_action_push_vlan: invalid actions order)",
                    ));
                }
                i += if t.get(i + 2) == Some(&K::OfSetVlanPcp) {
                    2
                } else {
                    1
                };
                Step::Push
            }
            K::OfSetVlanPcp => {
                // mlx5.rst: "VLAN set PCP offload is not supported on
                // existing headers" (only as part of a push).
                return Err(OffloadError::Unsupported(
                    "OF_SET_VLAN_PCP outside a push (mlx5.rst: set PCP is not supported on existing headers)",
                ));
            }
            K::OfSetVlanVid | K::SetMacSrc | K::SetMacDst => {
                // Header rewrites are one modify-header action: only
                // together, in one place.
                if steps.last() == Some(&Step::Modify) {
                    i += 1;
                    continue;
                }
                Step::Modify
            }
            K::VxlanEncap => Step::Encap,
            K::RepresentedPort | K::PortRepresentor | K::Jump | K::Drop => Step::Fate,
        };
        if steps.push(step).is_err() {
            return Err(OffloadError::Invalid(
                "too many actions (hw.c: MLX5_HW_MAX_ACTS)",
            ));
        }
        i += 1;
    }
    if !in_order(&steps) {
        return Err(OffloadError::Invalid(
            "actions out of the eSwitch's order: decap, pop, count/age, push, modify, encap, fate (dr_action.c mlx5dr_action_check_combo)",
        ));
    }
    Ok(())
}

/// True when `steps` follow [`ORDER`], each step at most as often as it
/// may come (`mlx5dr_action_check_combo`).
fn in_order(steps: &[Step]) -> bool {
    let mut at = 0;
    for (step, times) in ORDER {
        let mut n = 0;
        while n < times && steps.get(at) == Some(&step) {
            at += 1;
            n += 1;
        }
    }
    at == steps.len()
}

/// Rule-level checks that the table's templates cannot make: values of a
/// rule.
pub(super) fn check_rule(rule: &Rule) -> Result<(), OffloadError> {
    // dr_definer.c mlx5dr_definer_create_tag copies the rule's values
    // under the template's field masks without masking them: a value
    // with bits outside the mask never matches.
    if rule.pattern.iter().any(|i| !i.spec_within_mask()) {
        return Err(OffloadError::Invalid(
            "a value has bits outside the template's mask (dr_definer.c: never matches)",
        ));
    }
    for a in &rule.actions {
        if let Action::Age(age) = a
            && age.timeout_s > super::super::rule::Age::MAX_TIMEOUT_S
        {
            return Err(OffloadError::Invalid(
                "AGE timeout beyond 24 bits (rte_flow_action_age.timeout)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_table_takes_what_the_card_takes() {
        use Step::*;
        assert!(in_order(&[Counter, Push, Fate]));
        assert!(in_order(&[Pop, Counter, Fate]));
        assert!(in_order(&[
            Decap, Pop, Pop, Counter, Push, Push, Modify, Encap, Fate
        ]));
        assert!(
            !in_order(&[Counter, Pop, Fate]),
            "pop comes before the counter"
        );
        assert!(!in_order(&[Push, Counter, Fate]));
        assert!(!in_order(&[Encap, Push, Fate]));
        assert!(!in_order(&[Fate, Counter]));
        assert!(!in_order(&[Modify, Push, Fate]));
        assert!(!in_order(&[Counter, Counter, Fate]));
    }
}
