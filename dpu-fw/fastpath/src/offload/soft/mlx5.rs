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
//! EtherType after the tags. After a VXLAN item the items fill the inner
//! fields of the match (`cd->tunnel`), and an inner L3 item says nothing
//! about the inner frame's tags.
//!
//! VXLAN (22.11, `dr_definer.c` `mlx5dr_definer_conv_item_vxlan`, hw.c
//! `flow_hw_pattern_validate`, `__flow_hw_actions_translate`): the item is
//! taken in transfer templates, matching the VNI (and the flags, which the
//! rule language leaves out); with non-relaxed matching (the runtime's
//! templates) it adds the outer UDP protocol and destination port 4789
//! itself unless a UDP item named them. Items after it match the inner
//! ETH/IPv4/IPv6/TCP/UDP headers. VXLAN_DECAP and VXLAN_ENCAP are one
//! reformat action each (`MLX5DR_ACTION_TYP_TNL_L2_TO_L2`,
//! `L2_TO_TNL_L2`) in the eSwitch's order (decap first, encap last);
//! an encap whose configuration the actions template leaves unmasked
//! takes its outer headers from each rule (a bulk reformat action sized
//! for the table), of the template's length. What it refuses or gets
//! wrong is in [`check_pattern`], [`check_table`] and [`check_rule`].

use super::super::OffloadError;
use super::super::rule::{Action, ActionKind, Item, Rule};
use super::super::template::{ActionsTemplate, TableSpec};
use crate::wire::vxlan::VXLAN_PORT;

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
        check_decap_has_vxlan_match(t, &spec.pattern)?;
    }
    Ok(())
}

/// VXLAN_DECAP needs a VXLAN item: rte_flow.rst says so (an ACTION
/// error), hw.c `mlx5_flow_hw_actions_validate` does not check it ("TODO:
/// Validation logic"), and the card strips whatever tunnel its parser
/// found (mlx5.rst, raw decapsulation: "always done up to the outermost
/// tunnel detected by the HW"), a Geneve one included.
fn check_decap_has_vxlan_match(t: &ActionsTemplate, pattern: &[Item]) -> Result<(), OffloadError> {
    let tunnel = pattern.iter().any(|i| matches!(i, Item::Vxlan(_)));
    if t.contains(&ActionKind::VxlanDecap) && !tunnel {
        return Err(OffloadError::Unsupported(
            "VXLAN_DECAP without a VXLAN item (rte_flow.rst; hw.c does not check it and the card decaps any tunnel it parsed)",
        ));
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
    let tunnels = pattern
        .iter()
        .filter(|i| matches!(i, Item::Vxlan(_)))
        .count();
    if tunnels > 1 {
        // dr_definer.c mlx5dr_definer_conv_item_vxlan: a VXLAN item after
        // a tunnel item is refused (22.11: "Inner VXLAN vni item not
        // supported"; 22.11.11: "Inner VXLAN item not supported").
        return Err(OffloadError::Unsupported(
            "two VXLAN items (dr_definer.c mlx5dr_definer_conv_item_vxlan: inner VXLAN item not supported)",
        ));
    }
    if tunnels > 0 && !definer::fits(pattern) {
        // dr_definer.c mlx5dr_definer_find_best_hl_fit: "Unable to find
        // supporting match/jumbo definer combination" (ENOTSUP). Held to
        // tunnel patterns: IPv6 ones beyond the 5-tuple check would fail
        // it too on a card without full-DW jumbo definers (docs/offload.md).
        return Err(OffloadError::Unsupported(
            "the pattern's fields do not fit a match definer (dr_definer.c mlx5dr_definer_find_best_hl_fit: unable to find supporting match/jumbo definer combination)",
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
    check_vxlan_values(&rule.pattern)
}

/// The values of a VXLAN rule.
fn check_vxlan_values(pattern: &[Item]) -> Result<(), OffloadError> {
    let mut udp = None;
    for item in pattern {
        match item {
            Item::Udp(s) => udp = Some(*s),
            Item::Vxlan(s) => {
                if let Some(u) = udp
                    && (u.spec.dst_port ^ VXLAN_PORT) & u.mask.dst_port != 0
                {
                    // dr_definer.c mlx5dr_definer_conv_item_vxlan matches
                    // UDP port 4789 (ETH_VXLAN_DEFAULT_PORT) only when no
                    // UDP item named the port; a named one is matched
                    // as given, but the card's parser takes VXLAN at 4789
                    // (mlx5.rst: other ports need IP_OVER_VXLAN_PORT in
                    // the firmware), so the VNI would not be where the
                    // match reads it.
                    return Err(OffloadError::Unsupported(
                        "VXLAN after a UDP destination port other than 4789 (dr_definer.c mlx5dr_definer_conv_item_vxlan; the card parses VXLAN at 4789)",
                    ));
                }
                if s.mask.vni != 0 && s.spec.vni & s.mask.vni == 0 {
                    // mlx5.rst (22.11), Match on VXLAN: "Matching value
                    // equals 0 (value & mask) is not supported."
                    return Err(OffloadError::Unsupported(
                        "VNI 0 (mlx5.rst, Match on VXLAN: matching value equals 0 is not supported)",
                    ));
                }
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a pattern template's fields fit one of mlx5's match definers
/// (`dr_definer.c`, 22.11): the fields each item fills in the header
/// layout (`mlx5dr_definer_conv_items_to_hl`, non-relaxed matching) and
/// the selectors a definer has to pick them (`mlx5dr_definer_find_best_hl_fit`).
mod definer {
    use super::super::super::rule::Item;

    /// Where a field lies in the header layout (`mlx5_ifc_definer_hl_bits`):
    /// a 32-bit word and which of its bytes (bit i: byte i, most
    /// significant first).
    #[derive(Clone, Copy)]
    struct Hl {
        dw: u16,
        bytes: u8,
    }

    /// Words of the header layout (outer, inner).
    const ETH_L2: [u16; 2] = [0, 4];
    const ETH_L2_SRC: [u16; 2] = [8, 10];
    const ETH_L3: [u16; 2] = [14, 19];
    const ETH_L4: [u16; 2] = [24, 26];
    const IPV4: [u16; 2] = [64, 66];
    const IPV6_DST: [u16; 2] = [68, 72];
    const IPV6_SRC: [u16; 2] = [76, 80];
    const TCP_ICMP: u16 = 94;
    const TUNNEL_HEADER: u16 = 97;
    const REGISTER_C_0: u16 = 148;

    /// The definer's field slots (`MLX5DR_DEFINER_FNAME_*`), per side; a
    /// later item may overwrite or clear an earlier one's, as the C code
    /// does (`fc[]`).
    const ETH_TYPE: usize = 0;
    const VLAN_TYPE: usize = 1;
    const VLAN_TCI: usize = 2;
    const DMAC_47_16: usize = 3;
    const DMAC_15_0: usize = 4;
    const SMAC_47_16: usize = 5;
    const SMAC_15_0: usize = 6;
    const IP_VERSION: usize = 7;
    const IP_PROTOCOL: usize = 8;
    const IP_TOS: usize = 9;
    const IPV4_SRC: usize = 10;
    const IPV4_DST: usize = 11;
    const IPV6_SRC_Q: usize = 12; // four words
    const IPV6_DST_Q: usize = 16; // four words
    const L4_SPORT: usize = 20;
    const L4_DPORT: usize = 21;
    const TCP_FLAGS: usize = 22;
    const PER_SIDE: usize = 23;
    const ICMP_DW1: usize = 2 * PER_SIDE;
    const ICMP_DW2: usize = ICMP_DW1 + 1;
    const VXLAN_VNI: usize = ICMP_DW1 + 2;
    const VPORT: usize = ICMP_DW1 + 3;
    const SLOTS: usize = ICMP_DW1 + 4;

    /// Full DW selectors (`DW_SELECTORS_MATCH`, also those of a jumbo
    /// definer on a card without `full_dw_jumbo_support`), limited ones
    /// (words below 64 only), byte selectors (bytes below 256 only).
    /// A card with full-DW jumbo definers has 9 full and no limited ones:
    /// what fits here fits there.
    const FULL: usize = 6;
    const LIMITED: usize = 3;
    const BYTES: u32 = 8;

    const ALL: u8 = 0b1111;
    const B0: u8 = 0b0001;
    const B1: u8 = 0b0010;
    const B01: u8 = 0b0011;
    const B3: u8 = 0b1000;
    const B23: u8 = 0b1100;

    struct Conv {
        fc: [Option<Hl>; SLOTS],
        side: usize,
    }

    impl Conv {
        fn set(&mut self, slot: usize, dw: u16, bytes: u8) {
            if let Some(f) = self.fc.get_mut(slot) {
                *f = Some(Hl { dw, bytes });
            }
        }

        fn clear(&mut self, slot: usize) {
            if let Some(f) = self.fc.get_mut(slot) {
                *f = None;
            }
        }

        fn is_set(&self, slot: usize) -> bool {
            self.fc.get(slot).is_some_and(Option::is_some)
        }

        /// A slot of the current side (outer, or inner after a tunnel).
        fn side(&self, slot: usize) -> usize {
            self.side * PER_SIDE + slot
        }

        fn at(bases: [u16; 2], side: usize) -> u16 {
            bases.get(side).copied().unwrap_or(0)
        }

        fn item(&mut self, item: &Item) {
            let s = self.side;
            let l2 = Self::at(ETH_L2, s);
            let l3 = Self::at(ETH_L3, s);
            let l4 = Self::at(ETH_L4, s);
            match item {
                Item::RepresentedPort(_) => self.set(VPORT, REGISTER_C_0, B01),
                Item::Eth(e) => {
                    let m = e.mask;
                    let src = Self::at(ETH_L2_SRC, s);
                    if m.ether_type != 0 {
                        self.set(self.side(ETH_TYPE), l2 + 1, B23);
                    }
                    if m.src.iter().take(4).any(|b| *b != 0) {
                        self.set(self.side(SMAC_47_16), src, ALL);
                    }
                    if m.src.iter().skip(4).any(|b| *b != 0) {
                        self.set(self.side(SMAC_15_0), src + 1, B01);
                    }
                    if m.dst.iter().take(4).any(|b| *b != 0) {
                        self.set(self.side(DMAC_47_16), l2, ALL);
                    }
                    if m.dst.iter().skip(4).any(|b| *b != 0) {
                        self.set(self.side(DMAC_15_0), l2 + 1, B01);
                    }
                    if m.has_vlan {
                        self.set(self.side(VLAN_TYPE), l2 + 2, B1);
                    }
                }
                Item::Vlan(v) => {
                    let m = v.mask;
                    self.set(self.side(VLAN_TYPE), l2 + 2, B1);
                    if m.tci != 0 {
                        self.set(self.side(VLAN_TCI), l2 + 2, B23);
                    }
                    if m.inner_type != 0 {
                        self.set(self.side(ETH_TYPE), l2 + 1, B23);
                    }
                }
                Item::Ipv4(i) => {
                    let m = i.mask;
                    self.set(self.side(IP_VERSION), l2 + 2, B1);
                    // "Overwrite - Unset ethertype if present".
                    self.clear(self.side(ETH_TYPE));
                    if m.proto != 0 {
                        self.set(self.side(IP_PROTOCOL), l3, B3);
                    }
                    let a = Self::at(IPV4, s);
                    if m.dst != 0 {
                        self.set(self.side(IPV4_DST), a + 1, ALL);
                    }
                    if m.src != 0 {
                        self.set(self.side(IPV4_SRC), a, ALL);
                    }
                    if m.tos != 0 {
                        self.set(self.side(IP_TOS), l3, B1);
                    }
                }
                Item::Ipv6(i) => {
                    let m = i.mask;
                    self.set(self.side(IP_VERSION), l2 + 2, B1);
                    self.clear(self.side(ETH_TYPE));
                    if m.tc != 0 {
                        self.set(self.side(IP_TOS), l3, B1);
                    }
                    if m.proto != 0 {
                        self.set(self.side(IP_PROTOCOL), l3, B3);
                    }
                    for q in 0..4u16 {
                        let shift = 96 - 32 * u32::from(q);
                        let slot = usize::from(q);
                        if (m.src >> shift) & 0xFFFF_FFFF != 0 {
                            self.set(self.side(IPV6_SRC_Q + slot), Self::at(IPV6_SRC, s) + q, ALL);
                        }
                        if (m.dst >> shift) & 0xFFFF_FFFF != 0 {
                            self.set(self.side(IPV6_DST_Q + slot), Self::at(IPV6_DST, s) + q, ALL);
                        }
                    }
                }
                Item::Udp(u) => {
                    // The L4 type overwrites the IP protocol's slot.
                    self.set(self.side(IP_PROTOCOL), l2 + 2, B1);
                    if u.mask.src_port != 0 {
                        self.set(self.side(L4_SPORT), l4, B01);
                    }
                    if u.mask.dst_port != 0 {
                        self.set(self.side(L4_DPORT), l4, B23);
                    }
                }
                Item::Tcp(t) => {
                    self.set(self.side(IP_PROTOCOL), l2 + 2, B1);
                    if t.mask.flags != 0 {
                        self.set(self.side(TCP_FLAGS), l4 + 1, B1);
                    }
                    if t.mask.src_port != 0 {
                        self.set(self.side(L4_SPORT), l4, B01);
                    }
                    if t.mask.dst_port != 0 {
                        self.set(self.side(L4_DPORT), l4, B23);
                    }
                }
                Item::Icmp(i) => {
                    self.set(self.side(IP_PROTOCOL), l2 + 3, B0);
                    if i.mask.ty != 0 || i.mask.code != 0 {
                        self.set(ICMP_DW1, TCP_ICMP, ALL);
                    }
                    if i.mask.ident != 0 || i.mask.seq != 0 {
                        self.set(ICMP_DW2, TCP_ICMP + 1, ALL);
                    }
                }
                Item::Icmp6(i) => {
                    self.set(self.side(IP_PROTOCOL), l2 + 3, B0);
                    if i.mask.ty != 0 || i.mask.code != 0 {
                        self.set(ICMP_DW1, TCP_ICMP, ALL);
                    }
                }
                Item::Vxlan(v) => {
                    // UDP and port 4789 unless an item named them.
                    if !self.is_set(self.side(IP_PROTOCOL)) {
                        self.set(self.side(IP_PROTOCOL), l2 + 2, B1);
                    }
                    if !self.is_set(self.side(L4_DPORT)) {
                        self.set(self.side(L4_DPORT), l4, B23);
                    }
                    if v.mask.vni != 0 {
                        self.set(VXLAN_VNI, TUNNEL_HEADER + 1, 0b0111);
                    }
                    self.side = 1;
                }
            }
        }
    }

    /// True when the fields `pattern` fills fit a match or jumbo definer.
    pub(super) fn fits(pattern: &[Item]) -> bool {
        let mut conv = Conv {
            fc: [None; SLOTS],
            side: 0,
        };
        for item in pattern {
            conv.item(item);
        }
        // The header layout's words in use, and their bytes.
        let mut words: heapless::Vec<Hl, SLOTS> = heapless::Vec::new();
        for f in conv.fc.iter().flatten() {
            match words.iter_mut().find(|w| w.dw == f.dw) {
                Some(w) => w.bytes |= f.bytes,
                None => {
                    if words.push(*f).is_err() {
                        return false;
                    }
                }
            }
        }
        // Words from 64 on take a full DW selector (limited selectors and
        // byte selectors do not reach them); the others take a limited or
        // full selector, or one byte selector per byte in use. Selectors
        // go best to the words with the most bytes: the search of
        // mlx5dr_definer_best_hl_fit_recu finds a fit exactly when this
        // does.
        let high = words.iter().filter(|w| w.dw >= 64).count();
        if high > FULL {
            return false;
        }
        let mut low: heapless::Vec<u32, SLOTS> = words
            .iter()
            .filter(|w| w.dw < 64)
            .map(|w| w.bytes.count_ones())
            .collect();
        low.sort_unstable_by(|a, b| b.cmp(a));
        let selectors = FULL - high + LIMITED;
        low.iter().skip(selectors).sum::<u32>() <= BYTES
    }
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

    #[test]
    fn the_definer_model_counts_selectors_as_the_driver_does() {
        use super::super::super::rule::{Ipv4Fields, Ipv6Fields, Spec, TcpFields, VxlanFields};
        use chaingate_shared::PortId;
        let port = Item::RepresentedPort(PortId::from_index(0));
        let v4 = Item::Ipv4(Spec::new(
            Ipv4Fields::default(),
            Ipv4Fields {
                src: u32::MAX,
                dst: u32::MAX,
                proto: 0xFF,
                tos: 0,
            },
        ));
        let tcp = Item::Tcp(Spec::new(
            TcpFields::default(),
            TcpFields {
                src_port: 0xFFFF,
                dst_port: 0xFFFF,
                flags: 0x07,
            },
        ));
        let v6 = Item::Ipv6(Spec::new(
            Ipv6Fields::default(),
            Ipv6Fields {
                src: u128::MAX,
                dst: u128::MAX,
                proto: 0xFF,
                tc: 0,
            },
        ));
        // A session's IPv4 5-tuple: three full words (port register, two
        // addresses), the rest in bytes.
        assert!(definer::fits(&[port, v4, tcp]));
        // Two IPv6 addresses are eight words past the byte selectors'
        // reach: with the port register, more than six full selectors.
        assert!(!definer::fits(&[port, v6]));
        // A VXLAN session (shape b): six full words exactly.
        let vx = Item::Vxlan(VxlanFields::exactly(7));
        assert!(definer::fits(&[port, v4, vx, v4, tcp]));
        let mut seven = [port, v4, vx, v4, tcp, v6];
        assert!(!definer::fits(&seven));
        seven[5] = v4;
        assert!(
            definer::fits(&seven),
            "a second inner IPv4 item overwrites the first's fields"
        );
    }
}
