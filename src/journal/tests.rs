use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("director-journal-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

#[test]
fn appends_survive_and_a_torn_tail_is_dropped_and_cut_off() {
    let d = dir("torn");
    let (mut j, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert!(recs.is_empty());
    j.append(&"one".to_string());
    j.append(&"two".to_string());
    j.sync_now().unwrap();
    drop(j);
    let mut f = OpenOptions::new()
        .append(true)
        .open(d.join("j.bin"))
        .unwrap();
    f.write_all(&[9, 0, 0, 0, b'x']).unwrap();
    drop(f);
    let (mut j, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert_eq!(recs, vec!["one".to_string(), "two".to_string()]);
    // The torn tail goes before the next append, which is then read.
    j.append(&"three".to_string());
    j.sync_now().unwrap();
    drop(j);
    let (mut j, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert_eq!(recs, vec!["one", "two", "three"]);
    j.snapshot(["two".to_string()])
        .run()
        .map_err(|(_, e)| e)
        .unwrap();
    assert_eq!(j.records(), 1);
    j.append(&"four".to_string());
    j.take(false).unwrap().run().map_err(|(_, e)| e).unwrap();
    drop(j);
    let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert_eq!(recs, vec!["two".to_string(), "four".to_string()]);
    fs::remove_dir_all(d).unwrap();
}

/// Only zeros that run to the end of the file can be an unsynced
/// tail; zeros with records after them are damage, refused as such.
#[test]
fn a_hole_of_zeros_is_a_torn_tail_only_at_the_end() {
    let d = dir("hole");
    let path = d.join("j.bin");
    let (mut j, _) = Journal::open::<String>(&d, "j.bin").unwrap();
    for i in 0..40 {
        j.append(&format!("record {i}"));
    }
    j.sync_now().unwrap();
    drop(j);
    let whole = fs::read(&path).unwrap();
    // The 20th record's offset: 8 bytes of header, then 20 frames.
    let frame = |i: usize| 4 + 1 + format!("record {i}").len();
    let at = HEADER_LEN as usize + (0..20).map(frame).sum::<usize>();
    for hole in [
        // Zeros written over records, and zeros put between them.
        [
            &whole[..at],
            &[0u8; 4096][..],
            &whole[at + 4096.min(whole.len() - at - 40)..],
        ]
        .concat(),
        [&whole[..at], &[0u8; 4096][..], &whole[at..]].concat(),
    ] {
        fs::write(&path, &hole).unwrap();
        let err = Journal::open::<String>(&d, "j.bin").err().expect("refused");
        let msg = err.to_string();
        assert!(msg.contains(&format!("byte {at}")), "{msg}");
        assert!(msg.contains(&format!("truncate -s {at} ")), "{msg}");
        assert_eq!(fs::read(&path).unwrap(), hole, "the file was changed");
    }
    // The same zeros at the end: a torn tail, cut off.
    fs::write(&path, [&whole[..], &[0u8; 4096][..]].concat()).unwrap();
    let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert_eq!(recs.len(), 40);
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn an_unreadable_record_with_more_after_it_is_refused_not_cut_off() {
    let d = dir("unreadable");
    let (mut j, _) = Journal::open::<String>(&d, "j.bin").unwrap();
    j.append(&"a".to_string());
    j.sync_now().unwrap();
    drop(j);
    let path = d.join("j.bin");
    // A whole frame that is not a String (bad UTF-8), then a good one:
    // as a newer version's record would look to this one.
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend(2u32.to_le_bytes());
    bytes.extend([1, 0xff]);
    encode_into(&mut bytes, &"c".to_string());
    fs::write(&path, &bytes).unwrap();
    let e = Journal::open::<String>(&d, "j.bin").err().unwrap();
    assert!(
        e.to_string().contains("cannot be read, and more follow"),
        "{e}"
    );
    let keep = bytes.len() - 12;
    assert!(
        e.to_string().contains(&format!("truncate -s {keep} ")),
        "{e}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes, "the file is untouched");
    // Zeros where a frame starts, with a record after them, are not a
    // power loss's unsynced tail: damage, refused the same way.
    let first = bytes.len() - 12; // "a", before the two frames added
    let mut holed = bytes[..first].to_vec();
    holed.extend([0u8; 4]);
    encode_into(&mut holed, &"c".to_string());
    fs::write(&path, &holed).unwrap();
    let e = Journal::open::<String>(&d, "j.bin").err().unwrap();
    assert!(
        e.to_string().contains(&format!("truncate -s {first} ")),
        "{e}"
    );
    assert_eq!(fs::read(&path).unwrap(), holed, "the file is untouched");
    // The same frame last, or followed by zeros only, is a torn tail.
    for tail in [&[][..], &[0u8; 64][..]] {
        let mut b = bytes[..bytes.len() - 6].to_vec();
        b.extend(tail);
        fs::write(&path, &b).unwrap();
        let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
        assert_eq!(recs, vec!["a".to_string()]);
    }
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn compaction_copies_records_from_the_file_and_readers_find_them() {
    let d = dir("copy");
    let (mut j, _) = Journal::open::<String>(&d, "j.bin").unwrap();
    let a = j.append(&"alpha".to_string());
    let b = j.append(&"beta".repeat(100));
    j.sync_now().unwrap();
    assert_eq!(j.reader().read::<String>(b).unwrap(), "beta".repeat(100));
    let (rw, moves) =
        j.snapshot_items([Item::New("new".to_string()), Item::Copy(b), Item::Copy(a)]);
    rw.run().map_err(|(_, e)| e).unwrap();
    let r = j.reader();
    let (b2, a2) = (moves.forward(b).unwrap(), moves.forward(a).unwrap());
    assert_eq!(r.read::<String>(b2).unwrap(), "beta".repeat(100));
    assert_eq!(r.read::<String>(a2).unwrap(), "alpha");
    assert_eq!((moves.back(b2), moves.back(a2)), (Some(b), Some(a)));
    // The new record was not copied: no move names it.
    assert_eq!(moves.back(Span { at: 0, len: 4 }), None);
    // Appends land after the rewritten file, where append said.
    let c = j.append(&"gamma".to_string());
    j.sync_now().unwrap();
    assert_eq!(j.reader().read::<String>(c).unwrap(), "gamma");
    drop(j);
    let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert_eq!(
        recs,
        vec![
            "new".into(),
            "beta".repeat(100),
            "alpha".into(),
            "gamma".into()
        ]
    );
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn records_adjacent_in_the_file_are_copied_as_one_piece_in_bounded_reads() {
    let d = dir("merge");
    let (mut j, _) = Journal::open::<String>(&d, "j.bin").unwrap();
    // Together larger than one read of the copy.
    let big = "x".repeat((COPY_CHUNK as usize) * 3 / 4);
    let a = j.append(&big);
    let b = j.append(&"b".to_string());
    let c = j.append(&big);
    let dead = j.append(&"dead".to_string());
    let e = j.append(&"e".to_string());
    j.sync_now().unwrap();
    assert!(dead.at > c.at);
    let (rw, moves) = j.snapshot_items([
        Item::Copy(a),
        Item::Copy(b),
        Item::Copy(c),
        Item::Copy(e),
        Item::New("new".to_string()),
    ]);
    // a, b and c follow each other; e comes after a dropped record.
    assert_eq!(rw.parts.len(), 3);
    assert_eq!(moves.runs.len(), 2);
    rw.run().map_err(|(_, e)| e).unwrap();
    let r = j.reader();
    let spans: Vec<Span> = [a, b, c, e]
        .iter()
        .map(|&s| moves.forward(s).unwrap())
        .collect();
    assert_eq!(r.read::<String>(spans[0]).unwrap(), big);
    assert_eq!(r.read::<String>(spans[1]).unwrap(), "b");
    assert_eq!(r.read::<String>(spans[2]).unwrap(), big);
    assert_eq!(r.read::<String>(spans[3]).unwrap(), "e");
    for (old, new) in [a, b, c, e].into_iter().zip(&spans) {
        assert_eq!(moves.back(*new), Some(old));
    }
    // The dropped record was not copied.
    assert_eq!(moves.forward(dead), None);
    drop(j);
    let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[4], "new");
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_rewrite_given_up_leaves_the_file_and_moves_later_records_back() {
    let d = dir("abandon");
    let (mut j, _) = Journal::open::<String>(&d, "j.bin").unwrap();
    let a = j.append(&"a".repeat(50));
    j.append(&"b".repeat(50));
    j.sync_now().unwrap();
    let (rw, _) = j.snapshot_items([Item::<String>::Copy(a)]);
    // Appended while the rewrite is out: placed for the new layout.
    let c = j.append(&"c".to_string());
    // The rewrite cannot make its temporary file.
    fs::create_dir(d.join("j.tmp")).unwrap();
    let rw = match rw.run() {
        Err((rw, _)) => rw,
        Ok(()) => panic!("the rewrite should fail"),
    };
    let new_end = Journal::rewrite_end(&rw);
    let shift = j.abandon(&rw);
    assert!(shift > 0);
    j.sync_now().unwrap();
    let moved = Span {
        at: (c.at as i64 + shift) as u64,
        len: c.len,
    };
    assert!(c.at >= new_end);
    assert_eq!(j.reader().read::<String>(moved).unwrap(), "c");
    assert_eq!(j.reader().read::<String>(a).unwrap(), "a".repeat(50));
    drop(j);
    let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert_eq!(recs, vec!["a".repeat(50), "b".repeat(50), "c".to_string()]);
    fs::remove_dir_all(d).unwrap();
}

/// A record whose encoding changed: layout 1 was a bare number.
#[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
struct Grown {
    n: u32,
    note: String,
}

impl Layout for Grown {
    const VERSION: u32 = 2;
    fn upgrade(version: u32, body: &[u8]) -> Option<Self> {
        match version {
            0 | 1 => decode::<u32>(body).map(|n| Grown {
                n,
                note: "old".into(),
            }),
            _ => None,
        }
    }
}

/// A file as a build from before headers wrote it.
fn legacy(path: &Path, recs: &[u32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for r in recs {
        encode_into(&mut bytes, r);
    }
    fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn a_file_of_an_older_layout_is_upgraded_at_open_and_appends_follow() {
    let d = dir("upgrade");
    fs::create_dir_all(&d).unwrap();
    let path = d.join("j.bin");
    let mut old = legacy(&path, &[1, 2, 3]);
    old.extend([7, 0, 0]); // a torn tail
    fs::write(&path, &old).unwrap();
    let (mut j, recs) = Journal::open::<Grown>(&d, "j.bin").unwrap();
    let n: Vec<u32> = recs.iter().map(|g| g.n).collect();
    assert_eq!(n, [1, 2, 3]);
    assert!(recs.iter().all(|g| g.note == "old"));
    assert_eq!(fs::read(&path).unwrap()[..8], header(2));
    assert!(!path.with_extension("upgrade").exists());
    j.append(&Grown {
        n: 4,
        note: "new".into(),
    });
    j.sync_now().unwrap();
    drop(j);
    let (_, recs) = Journal::open::<Grown>(&d, "j.bin").unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[3].note, "new");
    // Layout 1 (a header, the old encoding) upgrades the same way.
    let mut v1 = header(1).to_vec();
    v1.extend(&legacy(&path, &[9])[..]);
    fs::write(&path, &v1).unwrap();
    let (_, recs) = Journal::open::<Grown>(&d, "j.bin").unwrap();
    assert_eq!(recs[0].n, 9);
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_newer_layout_or_an_unreadable_old_record_is_refused_and_the_file_kept() {
    let d = dir("newer");
    fs::create_dir_all(&d).unwrap();
    let path = d.join("j.bin");
    let mut newer = header(3).to_vec();
    encode_into(&mut newer, &5u32);
    fs::write(&path, &newer).unwrap();
    let e = Journal::open::<Grown>(&d, "j.bin").err().unwrap();
    assert!(
        e.to_string()
            .contains("written by a newer director (record layout 3; this one reads up to 2)"),
        "{e}"
    );
    assert_eq!(fs::read(&path).unwrap(), newer);
    // An old record that does not decode, with more after it: the
    // upgrade is given up, the old file stays, nothing is left over.
    let mut bad = legacy(&path, &[1]);
    bad.extend(2u32.to_le_bytes());
    bad.extend([0xff, 0xff]); // not a varint u32
    encode_into(&mut bad, &3u32);
    fs::write(&path, &bad).unwrap();
    let e = Journal::open::<Grown>(&d, "j.bin").err().unwrap();
    assert!(
        e.to_string()
            .contains("record layout 0 to 2: the record at byte 5 of"),
        "{e}"
    );
    assert!(e.to_string().contains("truncate -s 5 "), "{e}");
    assert_eq!(fs::read(&path).unwrap(), bad);
    assert!(!path.with_extension("upgrade").exists());
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_new_journal_starts_with_its_header_even_after_a_crash_while_writing_it() {
    let d = dir("fresh");
    let (j, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
    assert!(recs.is_empty());
    drop(j);
    let path = d.join("j.bin");
    assert_eq!(fs::read(&path).unwrap(), header(1));
    for cut in [&b"DIR"[..], &[0u8; 5][..], &header(1)[..6]] {
        fs::write(&path, cut).unwrap();
        let (mut j, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
        assert!(recs.is_empty());
        j.append(&"x".to_string());
        j.sync_now().unwrap();
        drop(j);
        let (_, recs) = Journal::open::<String>(&d, "j.bin").unwrap();
        assert_eq!(recs, ["x".to_string()]);
    }
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_failed_batch_is_retried_whole_and_in_order() {
    let d = dir("retry");
    let (mut j, _) = Journal::open::<u32>(&d, "j.bin").unwrap();
    j.append(&1u32);
    let batch = j.take(true).unwrap();
    j.append(&2u32);
    // As if the disk had failed halfway: the file holds a torn part.
    {
        let mut f = lock(&batch.file);
        f.torn = true;
        f.file.write_all(&[5, 0, 0, 0, 1]).unwrap();
    }
    j.put_back(batch);
    j.sync_now().unwrap();
    drop(j);
    let (_, recs) = Journal::open::<u32>(&d, "j.bin").unwrap();
    assert_eq!(recs, vec![1, 2]);
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn records_encoded_by_one_journal_append_to_and_replace_another() {
    let (a, b) = (dir("enc-a"), dir("enc-b"));
    let (mut ja, _) = Journal::open::<String>(&a, "j.bin").unwrap();
    let (mut jb, _) = Journal::open::<String>(&b, "j.bin").unwrap();
    ja.append(&"one".to_string());
    ja.append(&"two".to_string());
    let batch = ja.take(true).unwrap();
    assert_eq!(jb.append_encoded(batch.bytes()), Ok(2));
    batch.run().map_err(|(_, e)| e).unwrap();
    jb.take(true).unwrap().run().map_err(|(_, e)| e).unwrap();
    assert_eq!(ja.encoded().unwrap(), jb.encoded().unwrap());
    // Not whole records: refused, nothing appended.
    let whole = ja.encoded().unwrap();
    assert!(jb.append_encoded(&whole[..whole.len() - 1]).is_err());
    assert!(jb.append_encoded(&[0, 0, 0, 0]).is_err());
    assert!(jb.append_encoded(&[1, 0]).is_err());
    assert!(!jb.is_dirty());
    // A base: the other journal's records replace this one's.
    ja.append(&"three".to_string());
    ja.take(true).unwrap().run().map_err(|(_, e)| e).unwrap();
    jb.append(&"other".to_string());
    let rw = jb.replace_encoded(ja.encoded().unwrap()).unwrap();
    rw.run().map_err(|(_, e)| e).unwrap();
    jb.append(&"four".to_string());
    jb.take(true).unwrap().run().map_err(|(_, e)| e).unwrap();
    drop(jb);
    let (_, recs) = Journal::open::<String>(&b, "j.bin").unwrap();
    assert_eq!(recs, vec!["one", "two", "three", "four"]);
    fs::remove_dir_all(a).unwrap();
    fs::remove_dir_all(b).unwrap();
}
