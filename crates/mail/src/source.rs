//! Finding messages on disk: maildir folders, mbox files, single RFC 822 / `.eml` files.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use retain_model::MailMessage;
use walkdir::WalkDir;

use crate::context::MessageContext;
use crate::error::{Error, Result, SkipReason, SourceRef};
use crate::parse::{UTF8_BOM, parse_in_folder, starts_with_header_line};

/// How many leading bytes are inspected to tell e-mail from other files.
const SNIFF_BYTES: usize = 1024;

/// Every message under a path, in a deterministic order: an iterator of
/// `Result<(SourceRef, MailMessage)>`.
///
/// - A directory is walked recursively in file-name order (symbolic links followed, loops
///   reported). A directory with `cur/` and `new/` subdirectories is a maildir: the files in
///   `cur/` and `new/` are messages, `tmp/` (deliveries in progress) and the maildir's own
///   bookkeeping files (`dovecot-uidlist`, `maildirfolder`, ...) are not read. Its folder is its
///   path below the root, Maildir++ style (`.Sent.2020` is `Sent/2020`).
/// - A file starting with `From ` is an mbox: split at `From ` lines that follow a blank line
///   or look like an envelope line (`From sender Mon Jan  1 00:00:00 2024`); `>From ` lines
///   are unescaped (mboxrd). Its folder is its path below the root without `.mbox`/`.mbx`.
/// - Any other file starting with a `Name: value` header line is one message.
///
/// Nothing is dropped silently: unreadable files, files that are not e-mail
/// ([`Error::NotAMessage`], see [`Error::is_skip`]) and messages that fail to parse are yielded
/// as errors naming the file (and mbox position), so the caller can count and list them.
pub struct MailSource {
    root: PathBuf,
    ctx: MessageContext,
    walker: Box<dyn Iterator<Item = walkdir::Result<walkdir::DirEntry>> + Send>,
    mbox: Option<MboxReader>,
    maildirs: HashMap<PathBuf, bool>,
}

impl std::fmt::Debug for MailSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailSource")
            .field("root", &self.root)
            .field("in_mbox", &self.mbox.as_ref().map(|m| &m.path))
            .finish_non_exhaustive()
    }
}

impl MailSource {
    /// Reads every message under `path` (a directory, an mbox or a single message file).
    pub fn new(path: impl Into<PathBuf>, ctx: MessageContext) -> Self {
        let root = path.into();
        let mut cache: HashMap<PathBuf, bool> = HashMap::new();
        let walker = WalkDir::new(&root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(move |entry| {
                // Inside a maildir only cur/ and new/ are read.
                if entry.depth() == 0 {
                    return true;
                }
                let Some(parent) = entry.path().parent() else {
                    return true;
                };
                let parent_is_maildir = *cache
                    .entry(parent.to_path_buf())
                    .or_insert_with(|| is_maildir(parent));
                if !parent_is_maildir {
                    return true;
                }
                entry.file_type().is_dir() && entry.file_name() != "tmp"
            });
        MailSource {
            root,
            ctx,
            walker: Box::new(walker),
            mbox: None,
            maildirs: HashMap::new(),
        }
    }

    /// The context messages are read with (its warnings count what was read so far).
    pub fn context(&self) -> &MessageContext {
        &self.ctx
    }

    /// The folder of a message file inside a maildir's `cur/` or `new/`, if it is one.
    fn maildir_folder(&mut self, file: &Path) -> Option<Option<String>> {
        let sub = file.parent()?;
        if sub.file_name()? != "cur" && sub.file_name()? != "new" {
            return None;
        }
        let maildir = sub.parent()?;
        let known = *self
            .maildirs
            .entry(maildir.to_path_buf())
            .or_insert_with(|| is_maildir(maildir));
        known.then(|| relative_folder(maildir.strip_prefix(&self.root).ok(), true))
    }

    /// Opens one file: a message, the start of an mbox, or a skip.
    fn open_file(&mut self, path: &Path) -> Option<Result<(SourceRef, MailMessage)>> {
        let at = SourceRef::file(path);
        let io = |source| Error::Io {
            at: at.clone(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return Some(Err(io(e))),
        };
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Some(Err(io(e))),
        };
        let mut reader = BufReader::new(file);
        let head = match reader.fill_buf() {
            Ok(head) => head,
            Err(e) => return Some(Err(io(e))),
        };
        let head = &head[..head.len().min(SNIFF_BYTES)];
        let head = head.strip_prefix(UTF8_BOM).unwrap_or(head);
        let skip = |reason| {
            Some(Err(Error::NotAMessage {
                at: at.clone(),
                reason,
            }))
        };
        if head.is_empty() {
            return skip(SkipReason::Empty);
        }
        let maildir_folder = self.maildir_folder(path);
        if head.starts_with(b"From ") {
            let folder = maildir_folder.unwrap_or_else(|| {
                relative_folder(path.strip_prefix(&self.root).ok(), false).or_else(|| {
                    path.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .filter(|s| !s.is_empty())
                })
            });
            self.mbox = Some(MboxReader::new(path.to_path_buf(), reader, folder));
            return None;
        }
        if head.contains(&0) {
            return skip(SkipReason::Binary);
        }
        if !starts_with_header_line(head) {
            return skip(SkipReason::NoHeaderBlock);
        }
        if size > self.ctx.max_message_bytes {
            return Some(Err(Error::TooLarge {
                at: Some(at),
                size,
                limit: self.ctx.max_message_bytes,
            }));
        }
        let mut raw = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        if let Err(e) = reader.read_to_end(&mut raw) {
            return Some(Err(io(e)));
        }
        let folder = maildir_folder.flatten();
        Some(
            parse_in_folder(&raw, &self.ctx, folder.as_deref())
                .map(|m| (at.clone(), m))
                .map_err(|e| e.at(at.clone())),
        )
    }
}

impl Iterator for MailSource {
    type Item = Result<(SourceRef, MailMessage)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(mbox) = &mut self.mbox {
                match mbox.next_message(&self.ctx) {
                    Some(item) => return Some(item),
                    None => self.mbox = None,
                }
            }
            let entry = match self.walker.next()? {
                Ok(entry) => entry,
                Err(source) => {
                    let path = source.path().unwrap_or(&self.root).to_path_buf();
                    return Some(Err(Error::Walk { path, source }));
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            if !entry.file_type().is_file() {
                return Some(Err(Error::NotAMessage {
                    at: SourceRef::file(entry.path()),
                    reason: SkipReason::NotAFile,
                }));
            }
            if let Some(item) = self.open_file(entry.path()) {
                return Some(item);
            }
        }
    }
}

/// Whether `dir` has `cur/` and `new/` subdirectories (`tmp/` is often lost in copies).
fn is_maildir(dir: &Path) -> bool {
    dir.join("cur").is_dir() && dir.join("new").is_dir()
}

/// A path below the root as a `/`-separated folder. For maildirs, Maildir++ names
/// (`.Sent.2020`) become `Sent/2020`; for mbox files a `.mbox`/`.mbx` extension is dropped.
fn relative_folder(rel: Option<&Path>, maildir: bool) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for comp in rel?.components() {
        let comp = comp.as_os_str().to_string_lossy();
        match comp.strip_prefix('.') {
            Some(plus) if maildir => {
                parts.extend(plus.split('.').filter(|p| !p.is_empty()).map(str::to_owned))
            }
            _ => parts.push(comp.into_owned()),
        }
    }
    if !maildir && let Some(last) = parts.last_mut() {
        for ext in [".mbox", ".mbx"] {
            if let Some(stem) = last.strip_suffix(ext) {
                *last = stem.to_owned();
            }
        }
    }
    parts.retain(|p| !p.is_empty());
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Whether a `From ` line has the shape of an mbox envelope line: `From sender date`, the
/// date holding a time (`hh:mm`) and a four-digit year.
fn looks_like_envelope(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"From ") else {
        return false;
    };
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        return false;
    };
    let date = &rest[space..];
    let has_time = date
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b':' && w[2].is_ascii_digit());
    let has_year = date.windows(4).any(|w| w.iter().all(u8::is_ascii_digit));
    space > 0 && has_time && has_year
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

/// Streams the messages of one mbox file.
struct MboxReader {
    path: PathBuf,
    reader: BufReader<File>,
    folder: Option<String>,
    /// Index of the next message.
    index: usize,
    /// Bytes consumed so far.
    offset: u64,
    /// Start of the next message's `From ` line, once read; `None` at the very start.
    next_start: Option<u64>,
    done: bool,
}

impl MboxReader {
    fn new(path: PathBuf, reader: BufReader<File>, folder: Option<String>) -> Self {
        MboxReader {
            path,
            reader,
            folder,
            index: 0,
            offset: 0,
            next_start: None,
            done: false,
        }
    }

    fn next_message(&mut self, ctx: &MessageContext) -> Option<Result<(SourceRef, MailMessage)>> {
        if self.done {
            return None;
        }
        let mut line = Vec::with_capacity(256);
        // At the start, consume the first `From ` line.
        let start = match self.next_start {
            Some(start) => start,
            None => match self.reader.read_until(b'\n', &mut line) {
                Ok(n) => {
                    self.offset += n as u64;
                    0
                }
                Err(source) => {
                    self.done = true;
                    return Some(Err(Error::Io {
                        at: SourceRef::file(&self.path),
                        source,
                    }));
                }
            },
        };
        let at = SourceRef::mbox(&self.path, self.index, start);
        self.index += 1;

        let limit = ctx.max_message_bytes;
        let mut raw: Vec<u8> = Vec::new();
        let mut size: u64 = 0;
        let mut prev_blank = false;
        let mut last_len = 0usize;
        loop {
            line.clear();
            let n = match self.reader.read_until(b'\n', &mut line) {
                Ok(n) => n,
                Err(source) => {
                    self.done = true;
                    return Some(Err(Error::Io { at, source }));
                }
            };
            if n == 0 {
                self.done = true;
                break;
            }
            let line_start = self.offset;
            self.offset += n as u64;
            if line.starts_with(b"From ") && (prev_blank || looks_like_envelope(&line)) {
                self.next_start = Some(line_start);
                break;
            }
            // mboxrd: `>From `, `>>From `, ... lose one `>`.
            let content = match line.iter().position(|&b| b != b'>') {
                Some(i) if i > 0 && line[i..].starts_with(b"From ") => &line[1..],
                _ => &line[..],
            };
            size += content.len() as u64;
            if size <= limit {
                raw.extend_from_slice(content);
            }
            prev_blank = is_blank(content);
            last_len = content.len();
        }
        // The blank line before a separator (or the end of the file) belongs to the mbox
        // format, not the message.
        if prev_blank {
            size -= last_len as u64;
            raw.truncate(raw.len().saturating_sub(last_len));
        }
        if size > limit {
            return Some(Err(Error::TooLarge {
                at: Some(at),
                size,
                limit,
            }));
        }
        Some(
            parse_in_folder(&raw, ctx, self.folder.as_deref())
                .map(|m| (at.clone(), m))
                .map_err(|e| e.at(at)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::context::MailboxRule;

    fn ctx() -> MessageContext {
        MessageContext::new(
            "acme",
            MailboxRule::Fixed("jdoe".into()),
            "2024-06-01T00:00:00Z".parse().unwrap(),
        )
    }

    fn msg(id: &str, body: &str) -> String {
        format!(
            "Message-ID: <{id}>\nDate: Mon, 6 May 2024 10:00:00 +0000\nFrom: a@b.example\n\
             Subject: s\n\n{body}\n"
        )
    }

    fn collect(path: &Path) -> (Vec<(SourceRef, MailMessage)>, Vec<Error>) {
        let (mut ok, mut err) = (Vec::new(), Vec::new());
        for item in MailSource::new(path, ctx()) {
            match item {
                Ok(m) => ok.push(m),
                Err(e) => err.push(e),
            }
        }
        (ok, err)
    }

    #[test]
    fn mbox_with_three_messages_and_escaped_from() {
        let dir = tempfile::tempdir().unwrap();
        let first = msg("one@x", "Hello\n>From the start, quoted.\n>>From twice.");
        let second = msg(
            "two@x",
            "Hi.\nFrom here on, unescaped after a non-blank line.",
        );
        let third = msg("three@x", "Last.");
        let mbox = format!(
            "From alice@b.example Mon May  6 10:00:00 2024\n{first}\n\
             From bob@b.example Mon May  6 11:00:00 2024\n{second}\n\
             From MAILER-DAEMON Mon May  6 12:00:00 2024\n{third}\n"
        );
        let path = dir.path().join("Inbox.mbox");
        fs::write(&path, &mbox).unwrap();

        let (ok, err) = collect(&path);
        assert!(err.is_empty(), "{err:?}");
        let ids: Vec<_> = ok.iter().map(|(_, m)| m.message_id.as_str()).collect();
        assert_eq!(ids, ["one@x", "two@x", "three@x"]);
        let positions: Vec<_> = ok.iter().map(|(at, _)| at.mbox.unwrap()).collect();
        assert_eq!(positions[0].index, 0);
        assert_eq!(positions[0].offset, 0);
        let second_at = mbox.find("From bob@").unwrap() as u64;
        assert_eq!((positions[1].index, positions[1].offset), (1, second_at));
        assert_eq!(positions[2].index, 2);
        // `>From ` is unescaped, the separator's blank line is not part of the message.
        let unescaped = first
            .replace(">From the", "From the")
            .replace(">>From", ">From");
        assert_eq!(ok[0].1.size_bytes, unescaped.len() as u64);
        assert_eq!(
            ok[0].1.excerpt.as_deref(),
            Some("Hello From the start, quoted. >From twice.")
        );
        assert_eq!(ok[1].1.size_bytes, second.len() as u64);
        assert_eq!(ok[2].1.size_bytes, third.len() as u64);
        assert!(ok.iter().all(|(_, m)| m.folder.as_deref() == Some("Inbox")));
    }

    #[test]
    fn maildir_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("jdoe");
        for sub in ["cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(root.join("cur/1700000000.1.host:2,S"), msg("c1@x", "a")).unwrap();
        fs::write(root.join("new/1700000001.2.host"), msg("n1@x", "b")).unwrap();
        fs::write(root.join("tmp/1700000002.3.host"), msg("t1@x", "c")).unwrap();
        fs::write(
            root.join(".Sent/cur/1700000003.4.host:2,S"),
            msg("s1@x", "d"),
        )
        .unwrap();
        fs::write(root.join("dovecot-uidlist"), "3 V1 N4\n").unwrap();
        fs::write(root.join(".Sent/maildirfolder"), "").unwrap();

        let (ok, err) = collect(&root);
        assert!(err.is_empty(), "{err:?}");
        let got: Vec<_> = ok
            .iter()
            .map(|(_, m)| (m.message_id.as_str(), m.folder.as_deref()))
            .collect();
        // Sorted walk: `.Sent` sorts before `cur` and `new`; tmp/ is not read.
        assert_eq!(
            got,
            [("s1@x", Some("Sent")), ("c1@x", None), ("n1@x", None)]
        );
        assert!(ok.iter().all(|(at, _)| at.mbox.is_none()));
    }

    #[test]
    fn other_files_are_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/1.eml"), msg("eml@x", "x")).unwrap();
        fs::write(root.join("a/1.cats"), "1,3,2\n2,2,2\n").unwrap();
        fs::write(root.join("a/b/empty.eml"), "").unwrap();
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(root.join("a/b/garbage.bin"), &garbage).unwrap();
        fs::write(
            root.join("a/b/notes.txt"),
            "Format of this file: free text\n",
        )
        .unwrap();

        let (ok, err) = collect(root);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].1.message_id, "eml@x");
        assert_eq!(ok[0].0, SourceRef::file(root.join("a/1.eml")));
        let reported: Vec<_> = err
            .iter()
            .map(|e| {
                let at = e.source_ref().unwrap();
                let name = at.path.file_name().unwrap().to_string_lossy().into_owned();
                match e {
                    Error::NotAMessage { reason, .. } => (name, reason.as_str()),
                    other => panic!("unexpected {other}"),
                }
            })
            .collect();
        assert_eq!(
            reported,
            [
                ("1.cats".to_owned(), "no_header_block"),
                ("empty.eml".to_owned(), "empty"),
                ("garbage.bin".to_owned(), "binary"),
                ("notes.txt".to_owned(), "no_header_block"),
            ]
        );
        assert!(err.iter().all(|e| e.is_skip() && e.is_bad_input()));
        assert_eq!(
            err[0].to_string(),
            format!(
                "{}: skipped: not an e-mail message: no header block",
                root.join("a/1.cats").display()
            )
        );
    }

    #[test]
    fn missing_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (ok, err) = collect(&dir.path().join("nope"));
        assert!(ok.is_empty());
        assert_eq!(err.len(), 1);
        assert!(matches!(err[0], Error::Walk { .. }), "{}", err[0]);
        assert!(!err[0].is_bad_input());
    }

    #[test]
    fn oversized_mbox_message_is_refused_and_the_next_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        let big = msg("big@x", &"y".repeat(500));
        let small = msg("small@x", "z");
        fs::write(
            &path,
            format!(
                "From a Mon May  6 10:00:00 2024\n{big}\nFrom b Mon May  6 10:00:00 2024\n{small}"
            ),
        )
        .unwrap();
        let items: Vec<_> = MailSource::new(&path, ctx().with_max_message_bytes(300)).collect();
        assert_eq!(items.len(), 2);
        match &items[0] {
            Err(Error::TooLarge { at, size, .. }) => {
                assert_eq!(at.as_ref().unwrap().mbox.unwrap().index, 0);
                assert_eq!(*size, big.len() as u64);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(items[1].as_ref().unwrap().1.message_id, "small@x");
    }

    #[test]
    fn source_can_move_to_a_worker_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<MailSource>();
    }

    #[test]
    fn header_line_and_envelope_shapes() {
        assert!(starts_with_header_line(b"Message-ID: <x>"));
        assert!(starts_with_header_line(b"X-Origin:Kean-S"));
        assert!(!starts_with_header_line(b"Format of each line: x"));
        assert!(!starts_with_header_line(b"1,3,2\n"));
        assert!(!starts_with_header_line(b":x"));
        assert!(looks_like_envelope(
            b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011\n"
        ));
        assert!(!looks_like_envelope(b"From here on we agree.\n"));
    }
}
