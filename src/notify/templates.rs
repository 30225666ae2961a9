//! The words of an alert email: subject, plain-text and HTML bodies, in Korean or English.
//! Every value that comes from an account (names of accounts, pools, features, users) is
//! flattened to one line, and HTML-escaped in the HTML body.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use tally_core::Credits;

use super::{Alert, AlertKind, Locale};
use crate::config::NotifyConfig;

/// Held-back alerts listed one by one in a digest; the rest are counted.
const DIGEST_LISTED: usize = 50;
/// Longest account or pool name put in a subject, in characters.
const SUBJECT_NAME_CHARS: usize = 60;

/// What every email says besides the alert: who sends it and how to buy more.
#[derive(Debug, Clone)]
pub struct Wording {
    pub product_name: String,
    pub purchase_url: String,
    pub purchase_text_en: String,
    pub purchase_text_ko: String,
}

impl Wording {
    pub fn from_config(config: &NotifyConfig) -> Wording {
        Wording {
            product_name: config.product_name.clone(),
            purchase_url: config.purchase_url.clone(),
            purchase_text_en: config.purchase_text_en.clone(),
            purchase_text_ko: config.purchase_text_ko.clone(),
        }
    }

    fn purchase_text(&self, locale: Locale) -> &str {
        match locale {
            Locale::En => &self.purchase_text_en,
            Locale::Ko => &self.purchase_text_ko,
        }
    }
}

/// One email, ready for the mailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, without control characters.
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The email of `alert`, listing the held-back alerts `digest` it also carries, in the
/// language of `alert`'s locale.
pub fn render(alert: &Alert, digest: &[Alert], wording: &Wording) -> Rendered {
    let locale = Locale::from_tag(&alert.locale);
    let words = Words::of(locale);
    let account = one_line(&alert.account);
    let pool = one_line(&alert.pool);
    let balance = amount(alert.balance);
    let threshold = amount(alert.threshold);

    let mut subject = format!(
        "[{}] {}",
        one_line(&wording.product_name),
        (words.subject)(
            &shorten(&account, SUBJECT_NAME_CHARS),
            &shorten(&pool, SUBJECT_NAME_CHARS),
            alert.kind,
            &balance,
            &threshold,
        )
    );
    if !digest.is_empty() {
        subject.push_str(&(words.more_in_subject)(digest.len()));
    }
    let headline = (words.headline)(&account, &pool, alert.kind, &balance, &threshold);
    let mut fields = vec![
        (words.account, account.clone()),
        (words.pool, pool.clone()),
        (words.balance, format!("{balance} {}", words.credits)),
        (words.threshold, format!("{threshold} {}", words.credits)),
        (words.alert, (words.kind)(alert.kind).to_string()),
        (words.time, time(alert.time)),
    ];
    if alert.kind == AlertKind::Reset {
        // The allowance is in the headline; there is no threshold to speak of.
        fields.retain(|(label, _)| *label != words.threshold);
    }
    if let Some(burn) = &alert.runway {
        let date = burn.runs_out_at.map(|at| at.format("%Y-%m-%d").to_string());
        let before = burn.before_reset == Some(true);
        fields.push((
            words.runway,
            (words.runs_out)(date.as_deref(), &amount(burn.per_day), before),
        ));
    }
    if let Some(advice) = &alert.advice {
        fields.push((words.recommendation, one_line(advice)));
    }
    let purchase_text = one_line(wording.purchase_text(locale));
    let purchase_url = one_line(&wording.purchase_url);
    let footer = (words.footer)(&account, &one_line(&wording.product_name));

    let mut text = String::new();
    let _ = writeln!(text, "{headline}\n");
    for (label, value) in &fields {
        let _ = writeln!(text, "{label}: {value}");
    }
    for (title, rows) in [
        (words.top_features, &alert.top_features),
        (words.top_users, &alert.top_users),
    ] {
        let _ = writeln!(text, "\n{title}:");
        if rows.is_empty() {
            let _ = writeln!(text, "  {}", words.none);
        }
        for (name, credits) in rows {
            let _ = writeln!(text, "  {}: {}", one_line(name), amount(*credits));
        }
    }
    let _ = writeln!(
        text,
        "\n{}:\n  {purchase_text}\n  {purchase_url}",
        words.how_to_buy
    );
    if !digest.is_empty() {
        let _ = writeln!(text, "\n{}:", (words.digest_title)(digest.len()));
        for held in digest.iter().take(DIGEST_LISTED) {
            let _ = writeln!(text, "  - {}", digest_line(held, &words));
        }
        if digest.len() > DIGEST_LISTED {
            let _ = writeln!(
                text,
                "  {}",
                (words.digest_rest)(digest.len() - DIGEST_LISTED, &account)
            );
        }
    }
    let _ = write!(text, "\n--\n{footer}\n");

    let lang = match locale {
        Locale::En => "en",
        Locale::Ko => "ko",
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head><meta charset=\"utf-8\"><title>{}</title></head>\n\
         <body style=\"font-family: sans-serif; color: #222;\">\n<p><strong>{}</strong></p>\n<table>\n",
        escape(&subject),
        escape(&headline)
    );
    for (label, value) in &fields {
        let _ = writeln!(
            html,
            "<tr><th style=\"text-align: left; padding-right: 1em;\">{}</th><td>{}</td></tr>",
            escape(label),
            escape(value)
        );
    }
    html.push_str("</table>\n");
    for (title, rows) in [
        (words.top_features, &alert.top_features),
        (words.top_users, &alert.top_users),
    ] {
        let _ = writeln!(html, "<h3>{}</h3>", escape(title));
        if rows.is_empty() {
            let _ = writeln!(html, "<p>{}</p>", escape(words.none));
            continue;
        }
        html.push_str("<table>\n");
        for (name, credits) in rows {
            let _ = writeln!(
                html,
                "<tr><td style=\"padding-right: 1em;\">{}</td><td style=\"text-align: right;\">{}</td></tr>",
                escape(&one_line(name)),
                escape(&amount(*credits))
            );
        }
        html.push_str("</table>\n");
    }
    let _ = writeln!(
        html,
        "<h3>{}</h3>\n<p>{}<br><a href=\"{}\">{}</a></p>",
        escape(words.how_to_buy),
        escape(&purchase_text),
        escape(&purchase_url),
        escape(&purchase_url)
    );
    if !digest.is_empty() {
        let _ = writeln!(
            html,
            "<h3>{}</h3>\n<ul>",
            escape(&(words.digest_title)(digest.len()))
        );
        for held in digest.iter().take(DIGEST_LISTED) {
            let _ = writeln!(html, "<li>{}</li>", escape(&digest_line(held, &words)));
        }
        if digest.len() > DIGEST_LISTED {
            let _ = writeln!(
                html,
                "<li>{}</li>",
                escape(&(words.digest_rest)(digest.len() - DIGEST_LISTED, &account))
            );
        }
        html.push_str("</ul>\n");
    }
    let _ = write!(
        html,
        "<hr>\n<p style=\"color: #666; font-size: small;\">{}</p>\n</body>\n</html>\n",
        escape(&footer)
    );
    Rendered {
        subject,
        text,
        html,
    }
}

/// `text` on one line: every control character (CR and LF among them) becomes a space, so
/// no value can start a header or a line of its own.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` with the characters that mean something in HTML replaced by entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Credits with thousands separators: `2,500`, `-1,234.5`.
pub fn amount(credits: Credits) -> String {
    let plain = credits.to_string();
    let (sign, rest) = plain
        .strip_prefix('-')
        .map_or(("", plain.as_str()), |r| ("-", r));
    let (whole, fraction) = rest
        .split_once('.')
        .map_or((rest, None), |(w, f)| (w, Some(f)));
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match fraction {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn shorten(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn digest_line(alert: &Alert, words: &Words) -> String {
    format!(
        "{} · {} · {} · {} {} · {} {}",
        time(alert.time),
        (words.kind)(alert.kind),
        one_line(&alert.pool),
        words.balance,
        amount(alert.balance),
        words.threshold,
        amount(alert.threshold)
    )
}

/// The fixed words of one language.
struct Words {
    account: &'static str,
    pool: &'static str,
    balance: &'static str,
    threshold: &'static str,
    alert: &'static str,
    time: &'static str,
    credits: &'static str,
    top_features: &'static str,
    top_users: &'static str,
    none: &'static str,
    how_to_buy: &'static str,
    runway: &'static str,
    recommendation: &'static str,
    /// (run-out date or none, credits a day, before the next reset)
    runs_out: fn(Option<&str>, &str, bool) -> String,
    kind: fn(AlertKind) -> &'static str,
    /// (account, pool, kind, balance, threshold)
    subject: fn(&str, &str, AlertKind, &str, &str) -> String,
    headline: fn(&str, &str, AlertKind, &str, &str) -> String,
    more_in_subject: fn(usize) -> String,
    digest_title: fn(usize) -> String,
    digest_rest: fn(usize, &str) -> String,
    footer: fn(&str, &str) -> String,
}

impl Words {
    fn of(locale: Locale) -> Words {
        match locale {
            Locale::En => ENGLISH,
            Locale::Ko => KOREAN,
        }
    }
}

const ENGLISH: Words = Words {
    account: "Account",
    pool: "Credit pool",
    balance: "Balance",
    threshold: "Threshold",
    alert: "Alert",
    time: "Time",
    credits: "credits",
    top_features: "Top features by credits this cycle",
    top_users: "Top users by credits this cycle",
    none: "(no usage yet)",
    how_to_buy: "How to buy more credits",
    runway: "Runs out",
    recommendation: "Recommended",
    runs_out: |date, per_day, before| match date {
        None => "not at the last 7 days' rate (nothing used)".to_string(),
        Some(date) => format!(
            "{date} at the last 7 days' rate ({per_day} credits a day){}",
            if before {
                ", before the next reset"
            } else {
                ""
            }
        ),
    },
    kind: |kind| match kind {
        AlertKind::LowBalance => "low balance",
        AlertKind::IncludedUsed => "80% of included credits used",
        AlertKind::Shortfall => "credits ran out",
        AlertKind::Expiring => "credits expiring within 14 days",
        AlertKind::Reset => "the new cycle's credits arrived",
    },
    subject: |account, pool, kind, balance, threshold| match kind {
        AlertKind::LowBalance => {
            format!("{account}: {pool} credits are low, {balance} left (threshold {threshold})")
        }
        AlertKind::IncludedUsed => {
            format!("{account}: 80% of this cycle's included {pool} credits used, {balance} left")
        }
        AlertKind::Shortfall => format!("{account}: {pool} credits ran out"),
        AlertKind::Expiring => {
            format!("{account}: {balance} {pool} credits expire within 14 days")
        }
        AlertKind::Reset => {
            format!("{account}: the new cycle's {threshold} {pool} credits have arrived")
        }
    },
    headline: |account, pool, kind, balance, threshold| {
        match kind {
        AlertKind::LowBalance => format!(
            "The {pool} credit balance of {account} is {balance}, below its alert threshold of {threshold}."
        ),
        AlertKind::IncludedUsed => format!(
            "{account} has used 80% of this cycle's included {pool} credits (threshold {threshold}); {balance} credits remain."
        ),
        AlertKind::Shortfall => format!(
            "The {pool} credits of {account} have run out (balance {balance}, threshold {threshold}); \
             further calls are recorded as shortfall until credits are added."
        ),
        AlertKind::Expiring => format!(
            "{balance} {pool} credits of {account} expire within 14 days (alert minimum {threshold})."
        ),
        AlertKind::Reset => format!(
            "A new cycle began for {account}: its plan's {threshold} {pool} credits have arrived; {balance} credits are available."
        ),
    }
    },
    more_in_subject: |n| format!(" (+{n} held-back alerts)"),
    digest_title: |n| format!("{n} earlier alerts held back by the email rate limit"),
    digest_rest: |n, account| format!("... and {n} more; `tally alerts {account}` lists them all"),
    footer: |account, product| {
        format!("You receive this email as an administrator of the {product} account {account}.")
    },
};

const KOREAN: Words = Words {
    account: "계정",
    pool: "크레딧 풀",
    balance: "잔액",
    threshold: "알림 기준",
    alert: "알림",
    time: "시각",
    credits: "크레딧",
    top_features: "이번 주기 크레딧 사용 상위 기능",
    top_users: "이번 주기 크레딧 사용 상위 사용자",
    none: "(아직 사용 내역 없음)",
    how_to_buy: "크레딧 추가 구매 방법",
    runway: "소진 예상",
    recommendation: "추천",
    runs_out: |date, per_day, before| match date {
        None => "최근 7일 사용 없음".to_string(),
        Some(date) => format!(
            "{date} (최근 7일 기준 하루 {per_day} 크레딧){}",
            if before { ", 다음 초기화 전" } else { "" }
        ),
    },
    kind: |kind| match kind {
        AlertKind::LowBalance => "잔액 부족",
        AlertKind::IncludedUsed => "기본 제공 크레딧 80% 사용",
        AlertKind::Shortfall => "크레딧 소진",
        AlertKind::Expiring => "14일 이내 만료 예정 크레딧",
        AlertKind::Reset => "새 주기 크레딧 지급",
    },
    subject: |account, pool, kind, balance, threshold| match kind {
        AlertKind::LowBalance => {
            format!("{account}: {pool} 크레딧 잔액 부족, {balance} 남음 (기준 {threshold})")
        }
        AlertKind::IncludedUsed => {
            format!("{account}: 이번 주기 기본 제공 {pool} 크레딧 80% 사용, {balance} 남음")
        }
        AlertKind::Shortfall => format!("{account}: {pool} 크레딧 소진"),
        AlertKind::Expiring => {
            format!("{account}: {pool} 크레딧 {balance} 14일 이내 만료 예정")
        }
        AlertKind::Reset => format!("{account}: 새 주기 {pool} 크레딧 {threshold} 지급"),
    },
    headline: |account, pool, kind, balance, threshold| {
        match kind {
        AlertKind::LowBalance => format!(
            "{account} 계정의 {pool} 크레딧 잔액이 {balance} 크레딧으로, 알림 기준 {threshold} 크레딧 아래로 내려갔습니다."
        ),
        AlertKind::IncludedUsed => format!(
            "{account} 계정이 이번 주기 기본 제공 {pool} 크레딧의 80%를 사용했습니다 (기준 {threshold}). 남은 크레딧: {balance}."
        ),
        AlertKind::Shortfall => format!(
            "{account} 계정의 {pool} 크레딧이 모두 소진되었습니다 (잔액 {balance}, 기준 {threshold}). \
             크레딧을 추가할 때까지 이후 사용량은 부족분으로 기록됩니다."
        ),
        AlertKind::Expiring => format!(
            "{account} 계정의 {pool} 크레딧 중 {balance} 크레딧이 14일 이내에 만료됩니다 (알림 최소량 {threshold})."
        ),
        AlertKind::Reset => format!(
            "{account} 계정의 새 주기가 시작되어 요금제의 {pool} 크레딧 {threshold}이(가) 지급되었습니다. 사용 가능한 크레딧: {balance}."
        ),
    }
    },
    more_in_subject: |n| format!(" (보류된 알림 {n}건 포함)"),
    digest_title: |n| format!("발송 한도로 보류된 이전 알림 {n}건"),
    digest_rest: |n, account| {
        format!("... 외 {n}건 (`tally alerts {account}`에서 모두 볼 수 있습니다)")
    },
    footer: |account, product| {
        format!("{product} 계정 {account}의 관리자이므로 이 메일을 받으셨습니다.")
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn wording() -> Wording {
        Wording {
            product_name: "tally".into(),
            purchase_url: "https://billing.example.com/credits?a=1&b=2".into(),
            purchase_text_en: "Top up in Billing".into(),
            purchase_text_ko: "크레딧 충전하기".into(),
        }
    }

    fn alert(account: &str, locale: &str) -> Alert {
        Alert {
            id: "a1".into(),
            account: account.into(),
            pool: "ai".into(),
            kind: AlertKind::LowBalance,
            threshold: Credits::from_whole(500),
            balance: Credits::from_milli(120_500),
            time: DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default(),
            locale: locale.into(),
            recipients: vec!["ops@acme.kr".into()],
            top_features: vec![("image_generation".into(), Credits::from_whole(2500))],
            top_users: vec![("kim@acme.kr".into(), Credits::from_whole(900))],
            runway: None,
            advice: None,
        }
    }

    #[test]
    fn english_mail_names_everything() {
        let r = render(&alert("acme", "en"), &[], &wording());
        assert_eq!(
            r.subject,
            "[tally] acme: ai credits are low, 120.5 left (threshold 500)"
        );
        for body in [&r.text, &r.html] {
            for needle in [
                "acme",
                "ai",
                "120.5",
                "500",
                "image_generation",
                "2,500",
                "kim@acme.kr",
                "900",
                "Top up in Billing",
            ] {
                assert!(body.contains(needle), "{needle} missing in {body}");
            }
        }
        assert!(r
            .text
            .contains("https://billing.example.com/credits?a=1&b=2"));
        assert!(r
            .html
            .contains("href=\"https://billing.example.com/credits?a=1&amp;b=2\""));
    }

    #[test]
    fn korean_for_ko_locales() {
        let r = render(&alert("acme", "ko-KR"), &[], &wording());
        assert!(r.subject.contains("잔액 부족"), "{}", r.subject);
        assert!(r.text.contains("크레딧 충전하기"));
        assert!(r.html.contains("<html lang=\"ko\">"));
        assert!(r.text.contains("이번 주기 크레딧 사용 상위 기능"));
    }

    #[test]
    fn html_escapes_account_values() {
        let mut a = alert("<script>alert('x')</script>&", "en");
        a.top_users = vec![("\"><img src=x>".into(), Credits::from_whole(1))];
        let r = render(&a, &[], &wording());
        assert!(!r.html.contains("<script>"));
        assert!(!r.html.contains("<img"));
        assert!(r
            .html
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"));
        assert!(r.html.contains("&quot;&gt;&lt;img src=x&gt;"));
    }

    #[test]
    fn no_value_can_break_a_line_or_header() {
        let mut a = alert("acme\r\nBcc: evil@x.com", "en");
        a.pool = "ai\nX-Evil: 1".into();
        a.top_features = vec![("f\r\nBcc: evil@x.com".into(), Credits::from_whole(3))];
        let r = render(&a, std::slice::from_ref(&a), &wording());
        assert!(!r.subject.chars().any(char::is_control), "{:?}", r.subject);
        for body in [&r.text, &r.html] {
            assert!(!body.contains("\nBcc:"), "{body}");
            assert!(!body.contains("\nX-Evil"), "{body}");
            assert!(!body.contains('\r'));
        }
        assert!(r.text.contains("acme  Bcc: evil@x.com"));
    }

    #[test]
    fn digest_lists_held_alerts_and_counts_the_rest() {
        let primary = alert("acme", "en");
        let held: Vec<Alert> = (0..60)
            .map(|i| {
                let mut a = alert("acme", "en");
                a.id = format!("h{i}");
                a.balance = Credits::from_whole(400 - i);
                a
            })
            .collect();
        let r = render(&primary, &held, &wording());
        assert!(
            r.subject.ends_with("(+60 held-back alerts)"),
            "{}",
            r.subject
        );
        assert!(r
            .text
            .contains("60 earlier alerts held back by the email rate limit"));
        assert!(r.text.contains("Balance 400"));
        assert!(r.text.contains("... and 10 more"));
        assert_eq!(r.html.matches("<li>").count(), 51);
    }

    #[test]
    fn amounts_are_grouped() {
        for (milli, text) in [
            (0, "0"),
            (999_000, "999"),
            (1_000_000, "1,000"),
            (2_500_500, "2,500.5"),
            (-1_234_567_001, "-1,234,567.001"),
        ] {
            assert_eq!(amount(Credits::from_milli(milli)), text);
        }
    }

    #[test]
    fn long_names_are_shortened_in_subjects_only() {
        let long = "a".repeat(200);
        let r = render(&alert(&long, "en"), &[], &wording());
        assert!(r.subject.chars().count() < 200);
        assert!(r.text.contains(&long));
    }
}
