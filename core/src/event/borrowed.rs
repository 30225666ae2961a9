//! The borrowed reader of the event contract's hot path: a plain `ai.usage` event read in
//! place, its strings borrowed from the payload (unescaped only when they hold escapes),
//! its quantity read from the digits, with no allocation.
//!
//! It takes only what it is sure the full parser ([`crate::event::parse_reference`])
//! accepts, and gives the same event; anything else (a command, a hold, an unknown field,
//! a duplicate key, a limit exceeded, a syntax error, anything odd) is `None`, and the full
//! parser decides and names the reason. So the rules and the rejection reasons are the
//! full parser's by construction, and a property test (`core/tests/parser.rs`) checks
//! that both give the same result on generated valid and invalid payloads.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};

use crate::credits::{self, Credits};
use crate::event::{check_name, check_text, Body, Event, Status, Usage, MAX_NAME_BYTES};

/// A usage event as read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent<'a> {
    pub id: Cow<'a, str>,
    /// The product service (`source`).
    pub source: Cow<'a, str>,
    /// The account (`subject`).
    pub account: Cow<'a, str>,
    /// When it happened; the arrival time when the event does not say.
    pub time: DateTime<Utc>,
    pub user: Cow<'a, str>,
    pub feature: Cow<'a, str>,
    pub variant: Option<Cow<'a, str>>,
    pub quantity: Credits,
    pub status: Status,
    pub comment: Option<Cow<'a, str>>,
}

impl UsageEvent<'_> {
    /// The owned event the full parser would have given.
    pub fn into_event(self) -> Event {
        Event {
            id: self.id.into_owned(),
            source: self.source.into_owned(),
            account: self.account.into_owned(),
            time: self.time,
            body: Body::Usage(Usage {
                user: self.user.into_owned(),
                feature: self.feature.into_owned(),
                variant: self.variant.map(Cow::into_owned),
                quantity: self.quantity,
                status: self.status,
                comment: self.comment.map(Cow::into_owned),
                hold: None,
            }),
        }
    }
}

/// Deeper values than this in an ignored attribute go to the full parser (serde_json
/// refuses nesting beyond 128).
const MAX_DEPTH: usize = 64;

/// The one event type this reader takes.
const USAGE: &str = "ai.usage";

/// The envelope's attributes the reader takes; any other is skipped.
#[derive(Debug, Clone, Copy)]
enum Attribute {
    SpecVersion,
    Id,
    Source,
    Type,
    Subject,
    Time,
    Data,
}

/// Attribute names, in the order producers usually write them (the first match wins).
const ENVELOPE: [(&str, Attribute); 7] = [
    ("specversion", Attribute::SpecVersion),
    ("type", Attribute::Type),
    ("id", Attribute::Id),
    ("source", Attribute::Source),
    ("subject", Attribute::Subject),
    ("time", Attribute::Time),
    ("data", Attribute::Data),
];

/// The fields of a usage event's `data`; any other goes to the full parser.
#[derive(Debug, Clone, Copy)]
enum Field {
    User,
    Feature,
    Variant,
    Quantity,
    Status,
    Comment,
}

const DATA: [(&str, Field); 6] = [
    ("user", Field::User),
    ("feature", Field::Feature),
    ("variant", Field::Variant),
    ("quantity", Field::Quantity),
    ("status", Field::Status),
    ("comment", Field::Comment),
];

/// Reads `payload` as a plain usage event, or `None` when the full parser must decide.
pub fn usage(payload: &[u8], arrival: DateTime<Utc>) -> Option<UsageEvent<'_>> {
    usage_after(payload, arrival, &mut LastDate::default())
}

/// The calendar date of the last event time read (its text `YYYY-MM-DD` and the date), so
/// that the next event of the same day skips chrono's date check: a partition's events
/// mostly share their day. Any date, never a wrong one: only a text that was read as
/// that date matches.
#[derive(Debug, Default, Clone, Copy)]
pub struct LastDate(Option<([u8; 10], NaiveDate)>);

/// [`usage`], with the date of the last event time read by the caller (see [`LastDate`]).
pub fn usage_after<'a>(
    payload: &'a [u8],
    arrival: DateTime<Utc>,
    last: &mut LastDate,
) -> Option<UsageEvent<'a>> {
    // No UTF-8 check of the whole payload: outside strings the reader takes ASCII only,
    // and a string checks each multi-byte character as its scan stops at it (see
    // [`Reader::string`]), so a payload the reader takes is valid UTF-8 throughout.
    let mut r = Reader {
        bytes: payload,
        at: 0,
        suspect: false,
        last_date: *last,
    };
    let event = read(&mut r, arrival);
    *last = r.last_date;
    event
}

/// The event of [`usage_after`], read by `r` from the payload's start.
fn read<'a>(r: &mut Reader<'a>, arrival: DateTime<Utc>) -> Option<UsageEvent<'a>> {
    let payload = r.bytes;
    let mut seen = 0u16;
    let mut id = None;
    let mut source = None;
    let mut ty = None;
    let mut subject = None;
    let mut time = None;
    // Read in place (`data` is large: returning it would copy it); `seen` says whether
    // the attribute was there.
    let mut data = Data {
        user: None,
        feature: None,
        variant: None,
        quantity: Credits::from_whole(1),
        status: Status::Succeeded,
        comment: None,
    };
    r.ws();
    r.eat(b'{')?;
    r.ws();
    loop {
        let key = r.key_in(&ENVELOPE)?;
        let bit = match key {
            Some(Attribute::SpecVersion) => {
                if !r.plain("1.0") && r.borrowed_string()? != "1.0" {
                    return None;
                }
                1
            }
            Some(Attribute::Id) => {
                id = Some(r.name()?);
                2
            }
            Some(Attribute::Source) => {
                source = Some(r.name()?);
                4
            }
            Some(Attribute::Type) => {
                ty = Some(if r.plain(USAGE) {
                    Cow::Borrowed(USAGE)
                } else {
                    r.string()?
                });
                8
            }
            Some(Attribute::Subject) => {
                subject = Some(r.name()?);
                16
            }
            Some(Attribute::Time) => {
                time = Some(r.time()?);
                32
            }
            Some(Attribute::Data) => {
                r.data(&mut data)?;
                64
            }
            None => {
                r.skip(0)?;
                0
            }
        };
        // A known attribute given twice is an error of the full parser.
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        if !r.more()? {
            break;
        }
    }
    r.ws();
    // `specversion` and `data` must be there.
    if r.at != payload.len() || seen & (1 | 64) != 1 | 64 {
        return None;
    }
    let (id, source, ty, account) = (id?, source?, ty?, subject?);
    if ty != USAGE || id.0.is_empty() || source.0.is_empty() || blank(&account.0) {
        return None;
    }
    if !(name_ok(&id) && name_ok(&source) && name_ok(&account)) {
        return None;
    }
    let (id, source, account) = (id.0, source.0, account.0);
    let time = match time {
        Some(Time::Read(time)) => time,
        Some(Time::Text(text)) => DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc),
        None => arrival,
    };
    let (user, feature) = (data.user?, data.feature?);
    if feature.0.is_empty() || data.quantity.is_negative() {
        return None;
    }
    if !(name_ok(&user) && name_ok(&feature) && data.variant.as_ref().is_none_or(name_ok)) {
        return None;
    }
    let (user, feature) = (user.0, feature.0);
    if let Some(comment) = &data.comment {
        check_text(comment).ok()?;
    }
    Some(UsageEvent {
        id,
        source,
        account,
        time,
        user,
        feature,
        variant: data.variant.map(|v| v.0),
        quantity: data.quantity,
        status: data.status,
        comment: data.comment,
    })
}

/// Whether `text` is empty or only whitespace; a name starting with a visible ASCII
/// character (the common case) is not, without walking its characters.
fn blank(text: &str) -> bool {
    !text.as_bytes().first().is_some_and(u8::is_ascii_graphic) && text.trim().is_empty()
}

/// Nanoseconds in one unit of a fraction of so many decimals.
const SCALE: [u32; 10] = [
    1_000_000_000,
    100_000_000,
    10_000_000,
    1_000_000,
    100_000,
    10_000,
    1_000,
    100,
    10,
    1,
];

/// The common form of an event time, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, read without
/// chrono's general parser; `None` for any other form (an offset, a leap second, more
/// than nine decimals, ...), which `DateTime::parse_from_rfc3339` then reads.
#[cfg(test)]
fn utc_time(text: &str) -> Option<DateTime<Utc>> {
    utc_prefix(text.as_bytes(), &mut LastDate::default())
        .and_then(|(time, len)| (len == text.len()).then_some(time))
}

/// [`utc_time`] of the start of `bytes`, and how many bytes it took: the reader reads a
/// time in place, so its string is not scanned first.
fn utc_prefix(bytes: &[u8], last: &mut LastDate) -> Option<(DateTime<Utc>, usize)> {
    let (head, rest) = bytes.split_first_chunk::<19>()?;
    let day = head.first_chunk::<10>()?;
    let digit = |i: usize| u32::from(head[i].wrapping_sub(b'0'));
    let separators = head[10] == b'T' && head[13] == b':' && head[16] == b':';
    let digits = [11, 12, 14, 15, 17, 18].iter().all(|&i| digit(i) <= 9);
    if !(separators && digits) {
        return None;
    }
    let two = |i: usize| digit(i) * 10 + digit(i + 1);
    let date = match last.0 {
        Some((text, date)) if text == *day => date,
        _ => {
            let date = calendar_date(day)?;
            last.0 = Some((*day, date));
            date
        }
    };
    let (hour, minute, second) = (two(11), two(14), two(17));
    let (nano, len) = match rest {
        [b'Z', ..] => (0, 20),
        [b'.', fraction @ ..] => {
            let mut nano = 0u32;
            let mut count = 0;
            for &d in fraction.iter().take(10) {
                let d = u32::from(d.wrapping_sub(b'0'));
                if d > 9 {
                    break;
                }
                nano = nano * 10 + d;
                count += 1;
            }
            if !(1..=9).contains(&count) || fraction.get(count) != Some(&b'Z') {
                return None;
            }
            (nano * SCALE[count], 21 + count)
        }
        _ => return None,
    };
    // A leap second (60) is chrono's to read.
    if second > 59 {
        return None;
    }
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nano)?;
    Some((date.and_time(time).and_utc(), len))
}

/// The date of a `YYYY-MM-DD` text, `None` for any other text or no such day.
fn calendar_date(day: &[u8; 10]) -> Option<NaiveDate> {
    let digit = |i: usize| u32::from(day[i].wrapping_sub(b'0'));
    let digits = [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| digit(i) <= 9);
    if !(digits && day[4] == b'-' && day[7] == b'-') {
        return None;
    }
    let two = |i: usize| digit(i) * 10 + digit(i + 1);
    NaiveDate::from_ymd_opt((two(0) * 100 + two(2)) as i32, two(5), two(8))
}

/// The `time` attribute as read: in its common form already a time, else its text for
/// chrono's general parser.
enum Time<'a> {
    Read(DateTime<Utc>),
    Text(&'a str),
}

/// The `data` of a usage event, as far as read.
struct Data<'a> {
    user: Option<Named<'a>>,
    feature: Option<Named<'a>>,
    variant: Option<Named<'a>>,
    quantity: Credits,
    status: Status,
    comment: Option<Cow<'a, str>>,
}

/// A name as read, and whether it may hold what [`check_name`] refuses beyond its length
/// (escapes, DEL, or a 0xC2 byte that may start a C1 control). A raw C0 control cannot be
/// in a string read at all: JSON refuses it.
type Named<'a> = (Cow<'a, str>, bool);

/// [`check_name`], with its full check only for names that need it.
fn name_ok(name: &Named<'_>) -> bool {
    match name {
        (text, true) => check_name(text).is_ok(),
        (text, false) => text.len() <= MAX_NAME_BYTES,
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// High bit of each byte of `word` equal to `byte`; a false one only above a true one.
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Index of the first byte at or after `at` that ends or escapes a string or cannot be in
/// one (`"`, `\\`, a control byte), or that a name check must look at (DEL or any byte
/// of a multi-byte character: one may be a C1 control); the length when there is none.
/// Sixteen bytes a step where the CPU compares them at once, then eight a step.
fn scan(bytes: &[u8], at: usize) -> usize {
    // SAFETY: `scan16` only needs SSE2, and this is compiled only for targets that
    // enable it (all of x86-64: it is part of the architecture's baseline).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    let at = match unsafe { scan16(bytes, at) } {
        Ok(found) => return found,
        Err(rest) => rest,
    };
    scan8(bytes, at)
}

/// [`scan`] sixteen bytes a step with SSE2 (every x86-64 CPU has it): `Ok` of the byte
/// found, or `Err` of where fewer than sixteen bytes are left, for [`scan8`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn scan16(bytes: &[u8], mut at: usize) -> Result<usize, usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x,
    };
    while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        let value = u128::from_le_bytes(*chunk);
        let v = _mm_set_epi64x((value >> 64) as i64, value as i64);
        // As signed bytes, the controls (0x00 to 0x1f) and every byte from 0x80 up are
        // the ones below 0x20: one comparison for both.
        let low = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
        let found = _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(low, quote),
            _mm_or_si128(backslash, del),
        ));
        if found != 0 {
            return Ok(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    Err(at)
}

/// [`scan`] eight bytes a step, then one.
fn scan8(bytes: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = bytes.get(at..at + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(chunk);
        // Bytes below 0x20 and `"`, in one test: flipping bit 1 turns `"` (0x22) into 0x20
        // and keeps every byte below 0x20 below it (and the space above it); then bytes
        // below 0x21 are flagged by the borrow into their high bit.
        let flipped = word ^ (ONES * 0x02);
        let control = flipped.wrapping_sub(ONES * 0x21) & !flipped & HIGH;
        // Bytes from 0x7f up: their own high bit, or the one adding 1 carries into (a
        // carry out of 0xff flags the byte above it, a false flag above a true one).
        let wide = (word | word.wrapping_add(ONES)) & HIGH;
        let found = control | wide | bytes_equal(word, b'\\');
        if found != 0 {
            // The lowest flagged byte is a true one (false flags only follow true ones).
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f..) {
            break;
        }
        at += 1;
    }
    at
}

/// The length of the UTF-8 character of two to four bytes at the start of `bytes`, `None`
/// when they do not start one (a stray continuation byte, an overlong form, a surrogate,
/// a code point above U+10FFFF, or a character cut short).
#[cold]
fn char_len(bytes: &[u8]) -> Option<usize> {
    let len = match bytes.first()? {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    std::str::from_utf8(bytes.get(..len)?).ok().map(|_| len)
}

/// The value of the leading ASCII digits of `bytes` and their count: at least one and at
/// most `most`, `None` otherwise (so the value fits an `i64` with room for thousandths).
fn digits(bytes: &[u8], most: usize) -> Option<(i64, usize)> {
    let mut value = 0i64;
    let mut count = 0;
    for &b in bytes.iter().take(most + 1) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        value = value * 10 + i64::from(d);
        count += 1;
    }
    (1..=most).contains(&count).then_some((value, count))
}

/// A cursor over the payload.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Set when a string read held an escape, DEL or 0xC2 (see [`Named`]).
    suspect: bool,
    last_date: LastDate,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's whitespace, as serde_json reads it. Payloads mostly have none: any byte
    /// above the space ends it at one comparison.
    #[inline]
    fn ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.at) {
            if b > b' ' || !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                break;
            }
            self.at += 1;
        }
    }

    /// What follows a member of an object: `,` and another member (`true`, the cursor at
    /// it) or the closing `}` (`false`). Whitespace is looked for only where the byte
    /// after the value is not one of them: payloads mostly have none.
    #[inline(always)]
    fn more(&mut self) -> Option<bool> {
        let mut b = self.next()?;
        if b <= b' ' {
            self.at -= 1;
            self.ws();
            b = self.next()?;
        }
        match b {
            b',' => {
                if self.peek()? != b'"' {
                    self.ws();
                }
                Some(true)
            }
            b'}' => Some(false),
            _ => None,
        }
    }

    /// An object key: a string without escapes (keys with escapes go to the full parser).
    fn key(&mut self) -> Option<&'a str> {
        match self.string()? {
            Cow::Borrowed(key) => Some(key),
            Cow::Owned(_) => None,
        }
    }

    /// An object key looked up in `table`, and the `:` after it: `Some` of its value for a
    /// known key, `None` for any other. A known key spelled plainly is matched by its
    /// bytes in place (the common case); one with escapes goes to the full parser, as
    /// [`Reader::key`] says.
    fn key_in<T: Copy>(&mut self, table: &[(&str, T)]) -> Option<Option<T>> {
        if let Some((&b'"', rest)) = self.bytes.get(self.at..)?.split_first() {
            for &(name, value) in table {
                let len = name.len();
                // The closing quote and the colon right after it in one comparison: keys
                // are mostly written so (any other spacing takes the way below).
                if rest.get(len..len + 2) == Some(b"\":")
                    && rest.get(..len) == Some(name.as_bytes())
                {
                    self.at += len + 3;
                    self.ws();
                    return Some(Some(value));
                }
            }
        }
        let key = self.key()?;
        self.colon()?;
        Some(
            table
                .iter()
                .find(|(name, _)| *name == key)
                .map(|&(_, value)| value),
        )
    }

    /// The `:` after a key, with the whitespace around it.
    fn colon(&mut self) -> Option<()> {
        if self.peek() == Some(b':') {
            self.at += 1;
        } else {
            self.ws();
            self.eat(b':')?;
        }
        self.ws();
        Some(())
    }

    /// Whether the next value is the string `value` written plainly, stepping over it if
    /// so: the expected values (`1.0`, `ai.usage`) are matched in place, without a scan.
    fn plain(&mut self, value: &str) -> bool {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let len = value.len();
        let found = rest.first() == Some(&b'"')
            && rest.get(len + 1) == Some(&b'"')
            && rest.get(1..=len) == Some(value.as_bytes());
        if found {
            self.at += len + 2;
        }
        found
    }

    /// The `time` attribute: its common form read in place (see [`utc_prefix`]), any other
    /// string left to chrono.
    fn time(&mut self) -> Option<Time<'a>> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        if let Some((&b'"', rest)) = rest.split_first() {
            if let Some((time, len)) = utc_prefix(rest, &mut self.last_date) {
                if rest.get(len) == Some(&b'"') {
                    self.at += len + 2;
                    return Some(Time::Read(time));
                }
            }
        }
        self.borrowed_string().map(Time::Text)
    }

    /// A string the full parser borrows (`specversion`, `time`): no escapes.
    fn borrowed_string(&mut self) -> Option<&'a str> {
        self.key()
    }

    /// A name: a string, and whether [`name_ok`] must check it in full.
    #[inline(always)]
    fn name(&mut self) -> Option<Named<'a>> {
        self.suspect = false;
        let text = self.string()?;
        Some((text, self.suspect))
    }

    /// A string value, borrowed unless it holds escapes.
    #[inline(always)]
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let bytes = self.bytes;
        let start = self.at;
        loop {
            self.at = scan(bytes, self.at);
            match *bytes.get(self.at)? {
                b'"' => {
                    let run = bytes.get(start..self.at)?;
                    // SAFETY: `run` is valid UTF-8. `scan` steps only over ASCII bytes
                    // (it stops at every byte from 0x7f up), and the loop steps over DEL
                    // (ASCII) and over a multi-byte character only after `char_len`
                    // checked that character with `std::str::from_utf8`; so `run` is a
                    // sequence of ASCII bytes and whole, checked characters. Tested by
                    // `core/tests/parser.rs`'s `invalid_utf8_in_any_string_is_the_full_parsers`.
                    let s = unsafe { std::str::from_utf8_unchecked(run) };
                    self.at += 1;
                    return Some(Cow::Borrowed(s));
                }
                b'\\' => return self.escaped(start),
                // A raw control character is a syntax error.
                0..=0x1f => return None,
                // DEL: fine in a string; a name check looks at it.
                0x7f => {
                    self.suspect = true;
                    self.at += 1;
                }
                // A multi-byte character: fine in a string once checked; a name check
                // looks at 0xC2, which may start a C1 control.
                b => {
                    self.suspect |= b == 0xc2;
                    self.at += char_len(bytes.get(self.at..)?)?;
                }
            }
        }
    }

    /// The rest of a string from its first escape (at `self.at`; it began at `start`),
    /// unescaped into an owned copy. Apart, so the common string stays a short function.
    #[cold]
    #[inline(never)]
    fn escaped(&mut self, start: usize) -> Option<Cow<'a, str>> {
        let bytes = self.bytes;
        self.suspect = true;
        // The payload was not checked as a whole: each run is checked as it is copied.
        let mut out = String::from(std::str::from_utf8(bytes.get(start..self.at)?).ok()?);
        loop {
            let run = self.at;
            loop {
                match *bytes.get(self.at)? {
                    b'"' | b'\\' => break,
                    0..=0x1f => return None,
                    _ => self.at += 1,
                }
            }
            out.push_str(std::str::from_utf8(bytes.get(run..self.at)?).ok()?);
            if self.next()? == b'"' {
                return Some(Cow::Owned(out));
            }
            let c = match self.next()? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let high = self.hex4()?;
                    match high {
                        0xd800..=0xdbff => {
                            // Only a proper surrogate pair; a lone one is the full parser's.
                            self.eat(b'\\')?;
                            self.eat(b'u')?;
                            let low = self.hex4()?;
                            if !(0xdc00..=0xdfff).contains(&low) {
                                return None;
                            }
                            char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))?
                        }
                        0xdc00..=0xdfff => return None,
                        _ => char::from_u32(high)?,
                    }
                }
                _ => return None,
            };
            out.push(c);
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.bytes.get(self.at..self.at + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    /// A number in JSON's grammar, as its text: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let bytes = self.bytes;
        let start = self.at;
        let digits = |r: &mut Self| {
            let from = r.at;
            while bytes.get(r.at).is_some_and(u8::is_ascii_digit) {
                r.at += 1;
            }
            r.at > from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !digits(self) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        std::str::from_utf8(bytes.get(start..self.at)?).ok()
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        if self.bytes.get(self.at..)?.starts_with(word.as_bytes()) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// `null` (then `None`) or a string.
    fn opt_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Skips one value of an attribute the envelope does not read.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let close = if self.next()? == b'{' { b'}' } else { b']' };
                self.ws();
                if self.peek()? == close {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    if close == b'}' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b if b == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }

    /// A quantity in any other form (an exponent, more decimals, a string with escapes,
    /// ...), read as the full parser reads it.
    #[cold]
    #[inline(never)]
    fn quantity(&mut self, data: &mut Data<'a>) -> Option<u8> {
        let quantity = match self.peek()? {
            b'"' => credits::parse_decimal(&self.string()?),
            _ => credits::parse_decimal(self.number()?),
        };
        data.quantity = quantity.ok()?;
        Some(8)
    }

    /// The common forms of a quantity, read in place: a number or a string of up to 15
    /// whole digits (no leading zero) and up to three decimals (a thousandth is the
    /// unit). `None` for anything else, left to [`Reader::quantity`]; `parse_decimal`
    /// reads these forms to the same amount.
    #[inline]
    fn plain_quantity(&mut self) -> Option<Credits> {
        let rest = self.bytes.get(self.at..)?;
        let (quoted, rest) = match rest.split_first() {
            Some((&b'"', rest)) => (true, rest),
            _ => (false, rest),
        };
        let (whole, len) = digits(rest, 15)?;
        if len > 1 && rest[0] == b'0' {
            return None;
        }
        let (milli, end) = match rest.get(len) {
            Some(&b'.') => {
                let (fraction, count) = digits(rest.get(len + 1..)?, 3)?;
                let unit = [0, 100, 10, 1][count];
                (whole * 1000 + fraction * unit, len + 1 + count)
            }
            _ => (whole * 1000, len),
        };
        // What follows must end the value: a closing quote for a string; for a number
        // anything but more of a number (JSON then reads `,`, `}` or whitespace).
        let next = rest.get(end).copied();
        let fits = if quoted {
            next == Some(b'"')
        } else {
            !matches!(next, Some(b'0'..=b'9' | b'.' | b'e' | b'E'))
        };
        if !fits {
            return None;
        }
        self.at += end + usize::from(quoted) * 2;
        Some(Credits::from_milli(milli))
    }

    /// The `data` object of a usage event, read into `data` (as yet unread): only its
    /// own fields, each once, each of the type the full parser wants
    /// (`deny_unknown_fields` there); a hold goes to it too.
    fn data(&mut self, data: &mut Data<'a>) -> Option<()> {
        let mut seen = 0u8;
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.key_in(&DATA)?;
            let bit = match key {
                Some(Field::User) => {
                    data.user = Some(self.name()?);
                    1
                }
                Some(Field::Feature) => {
                    data.feature = Some(self.name()?);
                    2
                }
                Some(Field::Variant) => {
                    data.variant = match self.peek()? {
                        b'n' => {
                            self.literal("null")?;
                            None
                        }
                        _ => Some(self.name()?),
                    };
                    4
                }
                Some(Field::Quantity) => {
                    if let Some(quantity) = self.plain_quantity() {
                        data.quantity = quantity;
                        8
                    } else {
                        self.quantity(data)?
                    }
                }
                Some(Field::Status) => {
                    data.status = match &*self.string()? {
                        "succeeded" => Status::Succeeded,
                        "failed" => Status::Failed,
                        _ => return None,
                    };
                    16
                }
                Some(Field::Comment) => {
                    data.comment = self.opt_string()?;
                    32
                }
                None => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            if !self.more()? {
                return Some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The common time form reads as chrono reads it; every other form is left to chrono.
    #[test]
    fn utc_times_read_as_chrono_reads_them() {
        for text in [
            "2026-11-20T09:15:02Z",
            "2026-11-20T09:15:02.5Z",
            "2026-11-20T09:15:02.123456789Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2028-02-29T12:00:00.010Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc));
            assert_eq!(utc_time(text), chrono.ok(), "{text}");
        }
        for text in [
            "2026-11-20T09:15:02.1234567891Z",
            "2026-11-20T23:59:60Z",
            "2026-11-20T09:15:02+09:00",
            "2026-11-20t09:15:02z",
            "2026-11-20 09:15:02Z",
            "2026-02-30T09:15:02Z",
            "2026-13-01T09:15:02Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T09:15:02.Z",
            "2026-11-20T09:15:02",
            "2026-11-2aT09:15:02Z",
            "+2026-11-20T09:15:02Z",
            "2026-11-20T09:15:02.1x3Z",
        ] {
            assert_eq!(utc_time(text), None, "{text}");
        }
    }

    /// A time read after another, with the date the first left in [`LastDate`], reads as
    /// chrono reads it alone: the same day, another day, a day that does not exist, a text
    /// that differs from the last date in one byte.
    #[test]
    fn utc_times_after_another_read_as_chrono_reads_them() {
        let texts = [
            "2026-11-20T09:15:02Z",
            "2026-11-20T23:59:59.5Z",
            "2026-11-21T00:00:00Z",
            "2026-02-28T12:00:00Z",
            "2026-02-29T12:00:00Z",
            "2028-02-29T12:00:00Z",
            "2026-11-2aT09:15:02Z",
            "2026-11-20t09:15:02Z",
            "2026-11-20T24:00:00Z",
            "2026/11/20T09:15:02Z",
            "2026-11-20T09:15:02+09:00",
            "2026-11-20T23:59:60Z",
        ];
        for first in texts {
            for then in texts {
                let mut last = LastDate::default();
                utc_prefix(first.as_bytes(), &mut last);
                let read = utc_prefix(then.as_bytes(), &mut last)
                    .and_then(|(time, len)| (len == then.len()).then_some(time));
                let chrono = DateTime::parse_from_rfc3339(then).map(|t| t.with_timezone(&Utc));
                // The reader leaves leap seconds and offsets to chrono (`None` here).
                match read {
                    Some(time) => assert_eq!(Ok(time), chrono, "{then} after {first}"),
                    None => assert_eq!(utc_time(then), None, "{then} after {first}"),
                }
            }
        }
    }

    /// `scan` stops at the first byte that matters, at any offset within or after its
    /// sixteen- and eight-byte steps, and at no other byte.
    #[test]
    fn scan_finds_the_first_byte_that_matters() {
        let special = [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xc2, 0xc3, 0xff];
        let plain = [b'a', b' ', 0x20, 0x7e, b'!', b'#', b'[', b'/'];
        for len in 0..40 {
            for &filler in &plain {
                let clean = vec![filler; len];
                assert_eq!(scan(&clean, 0), len);
                for at in 0..len {
                    for &stop in &special {
                        let mut bytes = clean.clone();
                        bytes[at] = stop;
                        // A second special byte later must not hide the first.
                        if at + 1 < len {
                            bytes[len - 1] = b'"';
                        }
                        assert_eq!(scan(&bytes, 0), at, "{bytes:?}");
                        assert_eq!(scan(&bytes, at), at);
                    }
                }
            }
        }
    }

    /// Every byte value, at every offset of a sixteen-byte step and of the steps after it,
    /// stops `scan` exactly when the byte-at-a-time rule says it matters.
    #[test]
    fn scan_stops_at_exactly_the_bytes_that_matter() {
        let matters = |b: u8| matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f..);
        for byte in 0..=u8::MAX {
            for len in [16, 17, 24, 31, 32, 40] {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    let want = if matters(byte) { at } else { len };
                    assert_eq!(scan(&bytes, 0), want, "byte {byte:#x} at {at} of {len}");
                }
            }
        }
    }
}
