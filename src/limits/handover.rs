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
        // where each key sat in the old governor: a key may have moved to another tenant
        let mut old_keys: HashMap<&str, (usize, usize)> = HashMap::new();
        for (t, (_, state)) in old.tenants.iter().enumerate() {
            for (pos, k) in state.lock().key_index.iter().enumerate() {
                if let Some(id) = old_ids.get(k) {
                    old_keys.insert(id.as_str(), (t, pos));
                }
            }
        }
        for (name, state) in &self.tenants {
            let mut to = state.lock();
            // lock order: the new tenant, then one old tenant at a time; no path locks an old
            // tenant first while holding another
            if let Some((_, old_state)) = old.tenants.iter().find(|(n, _)| n == name) {
                carry_scope(&old_state.lock().tenant, &mut to.tenant);
            }
            let TenantState {
                keys, key_index, ..
            } = &mut *to;
            for (k, sc) in key_index.iter().zip(keys.iter_mut()) {
                let Some(&(t, pos)) = new_ids.get(k).and_then(|id| old_keys.get(id.as_str()))
                else {
                    continue;
                };
                if let Some((_, old_state)) = old.tenants.get(t) {
                    if let Some(old_sc) = old_state.lock().keys.get(pos) {
                        carry_scope(old_sc, sc);
                    }
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
        let same_tenant =
            |&(t, _): &(usize, usize)| self.tenants.get(t).is_some_and(|(n, _)| &**n == tenant);
        // a key that moved to another tenant settles in the tenant it was admitted under
        let (tenant, key) = match key_index
            .and_then(|k| self.key_pos.get(k).copied())
            .filter(same_tenant)
        {
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
