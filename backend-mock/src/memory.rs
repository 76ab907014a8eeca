//! Byte-backed physical memory: host RAM and every BAR, stored sparsely in 4 KiB pages (an
//! untouched page reads as zeros).

use parking_lot::Mutex;
use std::collections::BTreeMap;

const PAGE: u64 = 4096;

/// The simulated physical address space's contents.
#[derive(Debug, Default)]
pub struct PhysMemory {
    pages: Mutex<BTreeMap<u64, Box<[u8]>>>,
}

impl PhysMemory {
    /// Reads `len` bytes at `phys`.
    pub fn read(&self, phys: u64, len: usize) -> Vec<u8> {
        let pages = self.pages.lock();
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let at = phys + done as u64;
            let (page, off) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - off).min(len - done);
            if let Some(p) = pages.get(&page) {
                out[done..done + n].copy_from_slice(&p[off..off + n]);
            }
            done += n;
        }
        out
    }

    /// Writes `data` at `phys`.
    pub fn write(&self, phys: u64, data: &[u8]) {
        let mut pages = self.pages.lock();
        let mut done = 0usize;
        while done < data.len() {
            let at = phys + done as u64;
            let (page, off) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - off).min(data.len() - done);
            let p = pages
                .entry(page)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Copies `len` bytes from `src` to `dst`.
    pub fn copy(&self, src: u64, dst: u64, len: usize) {
        let data = self.read(src, len);
        self.write(dst, &data);
    }

    /// Fills `len` bytes at `phys` with `byte`.
    pub fn fill(&self, phys: u64, len: usize, byte: u8) {
        self.write(phys, &vec![byte; len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_across_pages_and_zero_elsewhere() {
        let m = PhysMemory::default();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        m.write(4000, &data);
        assert_eq!(m.read(4000, data.len()), data);
        assert_eq!(m.read(0, 16), vec![0; 16]);
        m.copy(4000, 1 << 20, 100);
        assert_eq!(m.read(1 << 20, 100), data[..100]);
    }
}
