//! A bounded leaf cache with single-flight issue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::sign::CertifiedKey;

use crate::{BottleCa, CaError, LeafName};

type Slot = Arc<OnceLock<Result<Arc<CertifiedKey>, String>>>;

/// Leaves by name. At most `capacity` names are kept; the least recently used goes first.
pub struct LeafCache {
    ca: Arc<BottleCa>,
    capacity: usize,
    slots: Mutex<HashMap<LeafName, (Slot, u64)>>,
    clock: AtomicU64,
    issued: AtomicU64,
    hits: AtomicU64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafCacheStats {
    pub issued: u64,
    pub hits: u64,
    pub entries: usize,
}

impl LeafCache {
    pub fn new(ca: Arc<BottleCa>, capacity: usize) -> Self {
        Self {
            ca,
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    pub fn ca(&self) -> &Arc<BottleCa> {
        &self.ca
    }

    /// Returns the leaf for `name`, signing it if needed. Callers that ask for the same name while
    /// it is being signed block on that one signature (about 100 µs) rather than signing again.
    pub fn get(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, CaError> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((slot, last_used)) = slots.get_mut(name) {
                *last_used = tick;
                slot.clone()
            } else {
                if slots.len() >= self.capacity {
                    evict_oldest(&mut slots);
                }
                let slot: Slot = Arc::new(OnceLock::new());
                slots.insert(name.clone(), (slot.clone(), tick));
                slot
            }
        };
        let mut signed_here = false;
        let result = slot.get_or_init(|| {
            signed_here = true;
            self.issued.fetch_add(1, Ordering::Relaxed);
            self.ca.issue(name).map_err(|e| e.to_string())
        });
        if !signed_here {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(leaf) => Ok(leaf.clone()),
            Err(reason) => {
                // A failed issue is not cached: the next request tries again.
                self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
                Err(CaError::InvalidName(format!("{name}: {reason}")))
            }
        }
    }

    pub fn stats(&self) -> LeafCacheStats {
        LeafCacheStats {
            issued: self.issued.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            entries: self.slots.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }
}

fn evict_oldest(slots: &mut HashMap<LeafName, (Slot, u64)>) {
    // Linear scan: eviction only happens once the cache is full, and the cache is small
    // (thousands of names), so this costs less than keeping a second index in order.
    if let Some(oldest) = slots.iter().min_by_key(|(_, (_, used))| *used).map(|(name, _)| name.clone()) {
        slots.remove(&oldest);
    }
}
