//! The identity of a backing file, the key every per-file table uses (the inode table, the
//! durability journal, the namespace models).

/// Identity of a backing file: its `st_dev` and `st_ino`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}
