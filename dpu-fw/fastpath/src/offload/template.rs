//! The template API's objects, shaped like rte_flow's (DPDK 22.11,
//! `rte_flow_configure`, `rte_flow_pattern_template_create`,
//! `rte_flow_actions_template_create`, `rte_flow_template_table_create`,
//! `rte_flow_async_create`).
//!
//! A template table holds rules of one shape: one pattern template (the
//! item types and their masks, fixed for the whole table: a rule brings
//! only its values) and a few actions templates (the action types in
//! order; every configuration comes with the rule). A rule is enqueued
//! into a table with the index of the actions template it follows. Tables
//! have a fixed size, chosen when they are made.
//!
//! [`TableSpec::of`] derives a table's spec from a rule and
//! [`TableSpec::place`] checks that a rule fits a table, so the offload
//! manager and every backend agree on what "the same shape" means.

use heapless::Vec;

use super::rule::{ActionKind, Attr, Item, MAX_ACTIONS, MAX_ITEMS, Rule};

/// Actions templates a table holds at most (mlx5's steering layer:
/// `MLX5DR_MATCHER_MAX_AT`, `drivers/net/mlx5/hws/mlx5dr_matcher.h`).
pub const MAX_ACTION_TEMPLATES: usize = 4;

/// A template table of a backend.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TableId(pub u32);

/// The action types of rules that follow one actions template, in order.
pub type ActionsTemplate = Vec<ActionKind, MAX_ACTIONS>;

/// What a template table is made of.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TableSpec {
    /// Group, priority, transfer: every rule of the table has these.
    pub attr: Attr,
    /// The eSwitch (transfer proxy) the table belongs to (0 when there is
    /// one).
    pub switch: u16,
    /// The pattern template: item types and masks, values blank
    /// ([`Item::blank`]).
    pub pattern: Vec<Item, MAX_ITEMS>,
    /// The actions templates.
    pub actions: Vec<ActionsTemplate, MAX_ACTION_TEMPLATES>,
    /// Rules it holds (the backend may round it up).
    pub size: u32,
}

/// Where a rule goes: a table, and which of its actions templates it
/// follows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Place {
    /// The table.
    pub table: TableId,
    /// Index of the actions template.
    pub actions: u8,
}

/// What `rte_flow_configure` reserves on a port for the template API.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PortAttr {
    /// Counters: shared ones, and one per rule with COUNT or AGE.
    pub counters: u32,
    /// AGE contexts: one per rule with AGE.
    pub aging: u32,
    /// Operations an insertion queue holds before it must be pulled.
    pub queue_size: u32,
}

impl PortAttr {
    /// Room for `rules` rules, each with an AGE at most, and `shared`
    /// shared counters.
    #[must_use]
    pub fn for_rules(rules: usize, shared: usize) -> Self {
        let rules = u32::try_from(rules).unwrap_or(u32::MAX);
        let shared = u32::try_from(shared).unwrap_or(u32::MAX);
        Self {
            counters: rules.saturating_add(shared),
            aging: rules,
            queue_size: 1024,
        }
    }
}

/// Puts `value` in the first free slot of `slots` (or a new one at the
/// end) and returns its index: how backends number their tables.
pub fn store<T>(slots: &mut alloc::vec::Vec<Option<T>>, value: T) -> usize {
    match slots.iter().position(Option::is_none) {
        Some(i) => {
            if let Some(s) = slots.get_mut(i) {
                *s = Some(value);
            }
            i
        }
        None => {
            slots.push(Some(value));
            slots.len() - 1
        }
    }
}

/// The actions template a rule follows.
#[must_use]
pub fn actions_template(rule: &Rule) -> ActionsTemplate {
    rule.actions.iter().map(super::rule::Action::kind).collect()
}

/// Why a rule does not fit a table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Misfit {
    /// Group, priority or transfer differ.
    Attr,
    /// The item types differ from the pattern template's.
    Items,
    /// An item's mask differs from the pattern template's.
    Mask,
    /// No actions template of the table has the rule's action types.
    Actions,
}

impl Misfit {
    /// What an operator reads.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Attr => "the rule's attributes differ from its table's",
            Self::Items => "the rule's items differ from its table's pattern template",
            Self::Mask => {
                "a mask differs from the table's pattern template (masks are fixed per table)"
            }
            Self::Actions => "no actions template of the table has the rule's action types",
        }
    }
}

impl TableSpec {
    /// The spec of a table for `rule`'s shape, with `actions` as its
    /// actions templates (the rule's own is added if missing), holding
    /// `size` rules, on eSwitch `switch`.
    #[must_use]
    pub fn of(rule: &Rule, actions: &[ActionsTemplate], switch: u16, size: u32) -> Self {
        let mut templates: Vec<ActionsTemplate, MAX_ACTION_TEMPLATES> = Vec::new();
        for t in actions {
            if !templates.contains(t) {
                let _ = templates.push(t.clone());
            }
        }
        let own = actions_template(rule);
        if !templates.contains(&own) {
            // A full list keeps its first templates; the rule then does
            // not fit, which `place` says.
            let _ = templates.push(own);
        }
        Self {
            attr: rule.attr,
            switch,
            pattern: rule.pattern.iter().map(Item::blank).collect(),
            actions: templates,
            size,
        }
    }

    /// True when `rule` has this table's attributes and pattern shape.
    #[must_use]
    pub fn same_pattern(&self, rule: &Rule) -> bool {
        self.attr == rule.attr
            && self.pattern.len() == rule.pattern.len()
            && self
                .pattern
                .iter()
                .zip(&rule.pattern)
                .all(|(t, i)| t.same_shape(i))
    }

    /// The index of the actions template `rule` follows in this table.
    ///
    /// # Errors
    /// [`Misfit`] when the rule does not belong in this table.
    pub fn place(&self, rule: &Rule) -> Result<u8, Misfit> {
        if self.attr != rule.attr {
            return Err(Misfit::Attr);
        }
        if self.pattern.len() != rule.pattern.len() {
            return Err(Misfit::Items);
        }
        for (t, i) in self.pattern.iter().zip(&rule.pattern) {
            if core::mem::discriminant(t) != core::mem::discriminant(i) {
                return Err(Misfit::Items);
            }
            if !t.same_shape(i) {
                return Err(Misfit::Mask);
            }
        }
        self.actions
            .iter()
            .position(|t| {
                t.len() == rule.actions.len()
                    && t.iter().zip(&rule.actions).all(|(k, a)| *k == a.kind())
            })
            .and_then(|p| u8::try_from(p).ok())
            .ok_or(Misfit::Actions)
    }
}
