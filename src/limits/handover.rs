//! A reload hands the live counters of the old governor to the new one, and requests admitted
//! before the swap settle in the new one: spend, windows, reservations and in-flight counts are
//! matched by tenant name, key identity (a digest prefix, never the key) and model glob.

use std::collections::HashMap;

use super::{Admitted, Governor, Scope, ScopeId, Slot, Slots, TenantState};

fn carry_slot(from: &Slot, to: &mut Slot) {
    to.requests = from.requests;
    to.tokens = from.tokens;
    to.inflight = from.inflight;
}

fn carry_scope(from: &Scope, to: &mut Scope) {
    to.day = from.day;
    to.month = from.month;
    to.reserved_usd = from.reserved_usd;
    carry_slot(&from.base, &mut to.base);
    for (glob, slot) in &mut to.models {
        if let Some((_, old)) = from.models.iter().find(|(g, _)| g == glob) {
            carry_slot(old, slot);
        }
    }
}

impl Governor {
    /// Takes over `old`'s counters. `old_ids` and `new_ids` map each config's key indexes to
    /// the keys' stable identities, so a key keeps its counters when keys are added,
    /// removed or reordered.
    pub fn take_over(
        &self,
        old: &Governor,
        old_ids: &HashMap<usize, String>,
        new_ids: &HashMap<usize, String>,
    ) {
        for (name, state) in &self.tenants {
            let Some((_, old_state)) = old.tenants.iter().find(|(n, _)| n == name) else {
                continue;
            };
            // lock order: old before new; no path locks them the other way round
            let from = old_state.lock();
            let mut to = state.lock();
            carry_scope(&from.tenant, &mut to.tenant);
            let TenantState {
                keys, key_index, ..
            } = &mut *to;
            for (k, sc) in key_index.iter().zip(keys.iter_mut()) {
                let Some(id) = new_ids.get(k) else { continue };
                let old_pos = from
                    .key_index
                    .iter()
                    .position(|ok| old_ids.get(ok) == Some(id));
                if let Some(old_sc) = old_pos.and_then(|p| from.keys.get(p)) {
                    carry_scope(old_sc, sc);
                }
            }
        }
    }

    /// `adm`, made by a governor this one took over, as the same reservation here: for the
    /// key now at `key_index` and the client-facing `model`. Settling the result releases it.
    /// A key the reload removed settles in its tenant (`tenant`) alone.
    pub fn rebind(
        &self,
        adm: &Admitted,
        tenant: &str,
        key_index: Option<usize>,
        model: &str,
    ) -> Admitted {
        let (tenant, key) = match key_index.and_then(|k| self.key_pos.get(k).copied()) {
            Some(pos) => pos,
            None => (
                self.tenants
                    .iter()
                    .position(|(n, _)| &**n == tenant)
                    .unwrap_or(usize::MAX),
                usize::MAX,
            ),
        };
        let mut slots = Slots::default();
        if let Some((_, state)) = self.tenants.get(tenant) {
            let st = state.lock();
            let scopes = [
                (ScopeId::Tenant, Some(&st.tenant)),
                (ScopeId::Key, st.keys.get(key)),
            ];
            for (id, sc) in scopes {
                let Some(sc) = sc else { continue };
                slots.push((id, None));
                if let Some(i) = sc.models.iter().position(|(g, _)| g.matches(model)) {
                    slots.push((id, Some(i)));
                }
            }
        }
        Admitted {
            tenant,
            key,
            slots,
            tokens: adm.tokens,
            at: adm.at,
            usd: adm.usd,
            price: adm.price,
            headers: adm.headers,
        }
    }
}
