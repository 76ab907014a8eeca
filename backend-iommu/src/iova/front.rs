//! The hot end of a thread's IOVA cache: single pages of the allocator the thread used last, in
//! a thread-local that has no destructor. Reaching a thread-local with a destructor checks its
//! registration state, and the magazines behind it (vectors per size class, per allocator) need
//! one; this small array does not, so the common allocation and free (one page, the allocator
//! used last) are a plain thread-local access, a compare and a store.
//!
//! What the front holds belongs to the thread's cache entry for its owner (`super::Caches`): the
//! entry's `Weak` keeps the owner's allocation alive, so no other allocator can appear at the
//! owner's address while the front names it, and comparing addresses identifies it. The entry's
//! owner gives the front's pages back when the thread exits, and a front whose owner is gone is
//! emptied before the entry goes.

use std::cell::RefCell;

/// Pages the front holds at most.
pub(super) const FRONT: usize = 32;

/// The front: `pages[..len]`, the last one handed out first, all of them the `owner`'s (the
/// address of its shared state; 0: none).
#[derive(Debug, Clone, Copy)]
pub(super) struct Front {
    pub owner: usize,
    pub len: usize,
    pub pages: [u64; FRONT],
}

const EMPTY: Front = Front {
    owner: 0,
    len: 0,
    pages: [0; FRONT],
};

thread_local! {
    static PAGES: RefCell<Front> = const { RefCell::new(EMPTY) };
}

/// The top page if `owner` owns the front and the page ends at or below `limit`.
#[inline]
pub(super) fn pop(owner: usize, limit: u64) -> Option<u64> {
    PAGES.with(|f| {
        let mut f = f.borrow_mut();
        if f.owner != owner || f.len == 0 {
            return None;
        }
        let top = f.pages[(f.len - 1) % FRONT];
        if !super::fits(top, 1 << super::PAGE_SHIFT, limit) {
            return None;
        }
        f.len -= 1;
        Some(top)
    })
}

/// Puts a page on the front if `owner` owns it and there is room.
#[inline]
pub(super) fn push(owner: usize, page: u64) -> bool {
    PAGES.with(|f| {
        let mut f = f.borrow_mut();
        if f.owner != owner || f.len == FRONT {
            return false;
        }
        let at = f.len;
        f.pages[at] = page;
        f.len += 1;
        true
    })
}

/// Empties the front and returns what it held; it then has no owner. `None` once the
/// thread-local is gone (never, as it has no destructor; kept total for thread exit).
pub(super) fn take() -> Option<Front> {
    PAGES
        .try_with(|f| std::mem::replace(&mut *f.borrow_mut(), EMPTY))
        .ok()
}

/// Gives the (empty) front to `owner` with `pages` on it. The caller's thread cache must hold an
/// entry for `owner` (its `Weak` is what makes the address an identity).
pub(super) fn adopt(owner: usize, pages: &[u64]) {
    PAGES.with(|f| {
        let mut f = f.borrow_mut();
        debug_assert_eq!(f.len, 0, "adopting a front that holds pages");
        let n = pages.len().min(FRONT);
        f.pages[..n].copy_from_slice(&pages[..n]);
        f.len = n;
        f.owner = owner;
    });
}

/// Empties the front if `gone` says its owner is gone (its pages go with it).
pub(super) fn forget_if(gone: impl Fn(usize) -> bool) {
    PAGES.with(|f| {
        let mut f = f.borrow_mut();
        if f.owner != 0 && gone(f.owner) {
            *f = EMPTY;
        }
    });
}
