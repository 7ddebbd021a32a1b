//! The BEP 44 items this node stores for others: bounded in count (least recently put
//! goes first), expiring two hours after their last put, and updated only by the rules of
//! the BEP (a higher sequence number, the owner's signature, a matching `cas`).

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::id::Id;
use crate::item::{Item, ItemError};

/// How long an item lives without being put again (BEP 44: may expire after 2 hours).
pub const ITEM_TTL: Duration = Duration::from_secs(2 * 3600);

#[derive(Clone, Debug)]
struct Stored {
    item: Item,
    put_at: Instant,
}

#[derive(Debug)]
pub struct ItemStore {
    items: lru::LruCache<Id, Stored>,
    ttl: Duration,
}

impl ItemStore {
    /// At most `max_items` (0: store nothing).
    pub fn new(max_items: usize, ttl: Duration) -> ItemStore {
        ItemStore {
            items: lru::LruCache::new(NonZeroUsize::new(max_items.max(1)).expect("non-zero")),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.items
            .iter()
            .map(|(_, s)| s.item.value().len() + std::mem::size_of::<(Id, Stored)>() + 32)
            .sum()
    }

    /// The live item stored at `target`.
    pub fn get(&self, now: Instant, target: &Id) -> Option<&Item> {
        self.items
            .peek(target)
            .filter(|s| now.saturating_duration_since(s.put_at) < self.ttl)
            .map(|s| &s.item)
    }

    /// Stores a put (whose item the caller has validated). `cas`: the sequence number the
    /// putter expects to replace.
    pub fn put(&mut self, now: Instant, item: Item, cas: Option<i64>) -> Result<(), ItemError> {
        let target = item.target();
        let live = self.get(now, &target).cloned();
        if let (Item::Mutable(new), Some(Item::Mutable(old))) = (&item, &live) {
            if cas.is_some_and(|c| c != old.seq) {
                return Err(ItemError::CasMismatch);
            }
            if new.seq < old.seq || (new.seq == old.seq && new.value != old.value) {
                return Err(ItemError::SeqTooLow);
            }
        }
        // An equal put (same value and seq) refreshes the item's time, as BEP 44 asks.
        self.items.put(target, Stored { item, put_at: now });
        Ok(())
    }

    /// Drops expired items.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        let dead: Vec<Id> = self
            .items
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.put_at) >= ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.items.pop(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{signing_key, MutableItem};

    fn mutable(seq: i64, value: &[u8]) -> Item {
        Item::Mutable(MutableItem::sign(&signing_key(&[3; 32]), b"", seq, value))
    }

    #[test]
    fn sequence_numbers_only_go_up_and_cas_must_match() {
        let t0 = Instant::now();
        let mut s = ItemStore::new(10, ITEM_TTL);
        let target = mutable(1, b"1:a").target();
        assert_eq!(s.put(t0, mutable(5, b"1:a"), None), Ok(()));
        assert_eq!(
            s.put(t0, mutable(4, b"1:b"), None),
            Err(ItemError::SeqTooLow)
        );
        assert_eq!(
            s.put(t0, mutable(5, b"1:b"), None),
            Err(ItemError::SeqTooLow)
        );
        assert_eq!(
            s.put(t0, mutable(5, b"1:a"), None),
            Ok(()),
            "same put refreshes"
        );
        assert_eq!(
            s.put(t0, mutable(6, b"1:c"), Some(4)),
            Err(ItemError::CasMismatch)
        );
        assert_eq!(s.put(t0, mutable(6, b"1:c"), Some(5)), Ok(()));
        match s.get(t0, &target) {
            Some(Item::Mutable(m)) => assert_eq!((m.seq, &m.value[..]), (6, &b"1:c"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn items_expire_and_the_count_is_bounded() {
        let t0 = Instant::now();
        let mut s = ItemStore::new(3, ITEM_TTL);
        for i in 0..10u8 {
            s.put(
                t0,
                Item::Immutable(format!("1:{}", i as char).into_bytes()),
                None,
            )
            .unwrap();
        }
        assert_eq!(s.len(), 3);
        let last = Item::Immutable(b"1:\x09".to_vec()).target();
        assert!(s.get(t0, &last).is_some());
        assert!(
            s.get(t0 + ITEM_TTL, &last).is_none(),
            "expired items are not served"
        );
        // An expired mutable item no longer blocks a lower sequence number.
        s.put(t0, mutable(9, b"1:z"), None).unwrap();
        assert_eq!(s.put(t0 + ITEM_TTL, mutable(1, b"1:y"), None), Ok(()));
        s.expire(t0 + ITEM_TTL * 2);
        assert!(s.is_empty());
    }
}
