// tally dashboard: reads the /v1 API with the key entered once (kept for this tab only),
// in English or Korean, and draws its charts as inline SVG. No dependencies.
'use strict';

const T = {
  en: {
    title: 'AI credits', key: 'API key', signin: 'Sign in', logout: 'Sign out', account: 'Account',
    overview: 'Overview', usage: 'Usage', history: 'History', ledger: 'Transactions', monthly: 'Monthly summary', matrix: 'Credit matrix',
    remaining: 'Remaining credits', used_month: 'Used this cycle', expiring: 'Expiring within 14 days', shortfall: 'Shortfall',
    plan: 'Plan', no_plan: 'No plan (calendar month)', cycle: 'cycle', until: 'until', flex: 'Flex (overage)', on: 'on', off: 'off',
    from: 'From', to: 'To', days7: '7 days', days30: '30 days', days90: '90 days', apply: 'Apply',
    by_service: 'Daily usage by service', by_user: 'Daily usage by user', credits: 'Credits', calls: 'Calls', failed: 'Failed',
    credit_history: 'Credit history', purchases: 'Purchase history', type: 'Type', pool: 'Pool', lot: 'Lot', expires: 'Expires',
    reference: 'Reference', comment: 'Comment', time: 'Time', user: 'User', service: 'Service', feature: 'Feature', status: 'Status',
    paid_by: 'Paid by', more: 'Next page', csv: 'Download CSV', month: 'Month', carried: 'Carried forward', allocated: 'Allocated',
    consumed: 'Consumed', expired: 'Expired', voided: 'Voided', free: 'Free', purchased: 'Purchased', version: 'Version',
    effective: 'Effective from', variant: 'Variant', unit: 'Unit', plans: 'Plans', per_cycle: 'Credits per cycle', period: 'Cycle',
    nothing: 'Nothing yet.', alert_notice: 'Low-credit alert: {pool} balance {balance} crossed {threshold} ({kind}) on {time}.',
    day: 'Day', total: 'Total', never: 'never', bad_key: 'This key is not valid.',
    range: 'Custom range', period_of: 'Period', summary_day: 'Daily summary',
    hold: 'Hold', held: 'held', hold_settled: 'settled', hold_unknown: 'unknown hold', hold_already_settled: 'already settled',
    hold_released: 'released before', hold_expired: 'expired',
    runway: 'Runs out', per_day: '/day', rate7: 'last 7 days', rate30: 'last 30 days', not_out: 'Not at this rate',
    before_reset: 'before the next reset', after_reset: 'after the next reset',
    included_warning: '{percent}% of this cycle\'s included {pool} credits are used.', recommended: 'Recommended',
  },
  ko: {
    title: 'AI 크레딧', key: 'API 키', signin: '로그인', logout: '로그아웃', account: '계정',
    overview: '개요', usage: '사용량', history: '내역', ledger: '거래 로그', monthly: '월별 요약', matrix: '크레딧 매트릭스',
    remaining: '남은 크레딧', used_month: '이번 주기 사용', expiring: '14일 이내 만료 예정', shortfall: '부족분',
    plan: '요금제', no_plan: '요금제 없음 (달력 월)', cycle: '주기', until: '까지', flex: '플렉스 (초과 사용)', on: '켜짐', off: '꺼짐',
    from: '시작', to: '종료', days7: '7일', days30: '30일', days90: '90일', apply: '적용',
    by_service: '서비스별 일일 사용량', by_user: '사용자별 일일 사용량', credits: '크레딧', calls: '호출', failed: '실패',
    credit_history: '크레딧 내역', purchases: '구매 내역', type: '유형', pool: '풀', lot: '로트', expires: '만료',
    reference: '참조', comment: '메모', time: '시간', user: '사용자', service: '서비스', feature: '기능', status: '상태',
    paid_by: '차감 로트', more: '다음 페이지', csv: 'CSV 다운로드', month: '월', carried: '이월', allocated: '지급',
    consumed: '사용', expired: '만료', voided: '취소', free: '무료', purchased: '구매', version: '버전',
    effective: '적용 시작', variant: '옵션', unit: '단위', plans: '요금제', per_cycle: '주기당 크레딧', period: '주기',
    nothing: '아직 없습니다.', alert_notice: '크레딧 부족 알림: {pool} 잔액이 {balance}(으)로 기준 {threshold}에 도달했습니다 ({kind}, {time}).',
    day: '날짜', total: '합계', never: '만료 없음', bad_key: '유효하지 않은 키입니다.',
    range: '기간 지정', period_of: '기간', summary_day: '일별 요약',
    hold: '예약', held: '예약액', hold_settled: '정산됨', hold_unknown: '알 수 없는 예약', hold_already_settled: '이미 정산됨',
    hold_released: '먼저 해제됨', hold_expired: '만료됨',
    runway: '소진 예상', per_day: '/일', rate7: '최근 7일', rate30: '최근 30일', not_out: '이 속도로는 소진되지 않음',
    before_reset: '다음 초기화 전', after_reset: '다음 초기화 후',
    included_warning: '이번 주기 기본 제공 {pool} 크레딧의 {percent}%를 사용했습니다.', recommended: '추천',
  },
};
const PAGES = ['overview', 'usage', 'history', 'ledger', 'monthly', 'matrix'];
const COLORS = ['#3758f9', '#12b76a', '#f79009', '#ee46bc', '#7a5af8', '#06aed4', '#f04438', '#84caff', '#66c61c', '#98a2b3'];

const errors = [];
window.addEventListener('error', (e) => { errors.push(String(e.message)); document.body.dataset.errors = errors.length; });
window.addEventListener('unhandledrejection', (e) => { errors.push(String(e.reason)); document.body.dataset.errors = errors.length; });

const st = {
  key: sessionStorage.getItem('tally.key') || '',
  lang: localStorage.getItem('tally.lang') || ((navigator.language || '').startsWith('ko') ? 'ko' : 'en'),
  account: '', page: 'overview', from: '', to: '', month: '', day: '', span: 'month', cursor: null,
  // The account's time zone (from its balance): every time on screen is shown in it.
  tz: 'UTC', balance: null,
};

function t(k, vars) {
  let s = (T[st.lang] && T[st.lang][k]) || T.en[k] || k;
  for (const [name, v] of Object.entries(vars || {})) s = s.replace('{' + name + '}', v);
  return s;
}
function $(id) { return document.getElementById(id); }
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function num(v) { return Number(v || 0).toLocaleString(st.lang === 'ko' ? 'ko-KR' : 'en-US', { maximumFractionDigits: 3 }); }
// An RFC 3339 time as the account's wall clock with the zone named, e.g.
// `2026-12-01 00:00 (Asia/Seoul)`: a cycle that starts at midnight in Seoul must not read
// as 15:00 the day before. Seconds only when there are any.
function when(s) {
  if (!s) return '';
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return s;
  const parts = {};
  const fmt = new Intl.DateTimeFormat('en-US', { timeZone: st.tz, year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
  for (const p of fmt.formatToParts(d)) parts[p.type] = p.value;
  const sec = parts.second !== '00' ? ':' + parts.second : '';
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}${sec} (${st.tz})`;
}
// The step of an axis with about `n` ticks up to `max`: 1, 2 or 5 times a power of ten, so
// ticks read 0, 50, 100, 150 and never 165.125.
function niceStep(max, n) {
  const raw = max / n;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}
function isoDay(d) { return d.getFullYear() + '-' + String(d.getMonth() + 1).padStart(2, '0') + '-' + String(d.getDate()).padStart(2, '0'); }
function daysAgo(n) { const d = new Date(); d.setDate(d.getDate() - n); return isoDay(d); }

class ApiError extends Error { constructor(status, msg) { super(msg); this.status = status; } }
async function api(path, accept) {
  const r = await fetch(path, { headers: { Authorization: 'Bearer ' + st.key, Accept: accept || 'application/json' } });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, msg);
  }
  return accept === 'text/csv' ? { text: await r.text(), next: null } : { json: await r.json(), next: r.headers.get('x-next-cursor') };
}
async function get(path) { return (await api(path)).json; }
const q = (o) => Object.entries(o).filter(([, v]) => v !== '' && v !== null && v !== undefined).map(([k, v]) => encodeURIComponent(k) + '=' + encodeURIComponent(v)).join('&');
const acct = () => encodeURIComponent(st.account);

// `rowKey`, when given, names each row (`data-row`) and its cells (`data-col`), so a test
// can read a figure without depending on the language or the number format.
function table(cols, rows, rowKey) {
  if (!rows.length) return el('p', { class: 'muted' }, t('nothing'));
  const cell = (c, r) => {
    const attrs = { class: c.num ? 'num' : '' };
    if (rowKey) { attrs['data-col'] = c.label; if (c.num) attrs['data-value'] = String(c.get(r)); }
    return el('td', attrs, c.num ? num(c.get(r)) : c.get(r));
  };
  return el('div', { class: 'scroll' }, el('table', {},
    el('thead', {}, el('tr', {}, cols.map((c) => el('th', { class: c.num ? 'num' : '' }, t(c.label))))),
    el('tbody', {}, rows.map((r) => el('tr', rowKey ? { 'data-row': rowKey(r) } : {}, cols.map((c) => cell(c, r)))))));
}

// Stacked bars per day by `series`; hovering a bar shows its credits and feature breakdown.
function chart(rows, series, from, to) {
  const days = [];
  for (let d = new Date(from + 'T00:00:00'); isoDay(d) <= to && days.length < 400; d.setDate(d.getDate() + 1)) days.push(isoDay(d));
  const names = [...new Set(rows.map((r) => r[series] || '-'))].sort();
  const cell = {};
  for (const r of rows) {
    const k = r.day + '\u0000' + (r[series] || '-');
    const c = cell[k] || (cell[k] = { credits: 0, calls: 0, features: {} });
    c.credits += Number(r.credits); c.calls += r.calls;
    if (r.feature) c.features[r.feature] = (c.features[r.feature] || 0) + Number(r.credits);
  }
  const totals = days.map((d) => names.reduce((s, n) => s + ((cell[d + '\u0000' + n] || {}).credits || 0), 0));
  // The axis ends at the first round tick at or above the highest bar.
  const step = niceStep(Math.max(0.001, ...totals), 4);
  const ticks = Math.max(1, Math.ceil(Math.max(0, ...totals) / step - 1e-9));
  const max = step * ticks;
  const W = 900, H = 260, L = 50, B = 30, w = (W - L - 10) / Math.max(1, days.length);
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': t('credits') });
  for (let i = 0; i <= ticks; i++) {
    const y = H - B - (H - B - 10) * i / ticks;
    // Rounded to thousandths (credits' precision): 3 × 0.1 is 0.30000000000000004 in floats.
    const value = Math.round(step * i * 1000) / 1000;
    g.append(svg('line', { x1: L, x2: W - 10, y1: y, y2: y, stroke: '#e4e7ec' }));
    g.append(svg('text', { x: L - 6, y: y + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#667085', 'data-tick': value }, num(value)));
  }
  days.forEach((d, i) => {
    let y = H - B;
    names.forEach((n, j) => {
      const c = cell[d + '\u0000' + n];
      if (!c || !c.credits) return;
      const h = (H - B - 10) * c.credits / max;
      y -= h;
      const breakdown = Object.entries(c.features).sort((a, b) => b[1] - a[1]).map(([f, v]) => `\n  ${f}: ${num(v)}`).join('');
      g.append(svg('rect', { x: L + i * w + 1, y, width: Math.max(1, w - 2), height: h, fill: COLORS[j % COLORS.length] },
        svg('title', {}, `${d} · ${n}: ${num(c.credits)} ${t('credits')}, ${c.calls} ${t('calls')}${breakdown}`)));
    });
    if (days.length <= 16 || i % Math.ceil(days.length / 12) === 0) {
      g.append(svg('text', { x: L + i * w + w / 2, y: H - 10, 'text-anchor': 'middle', 'font-size': 10, fill: '#667085' }, d.slice(5)));
    }
  });
  const legend = el('div', { class: 'legend' }, names.map((n, j) => {
    const i = el('i'); i.style.background = COLORS[j % COLORS.length];
    return el('span', {}, i, n);
  }));
  return el('div', { class: 'chart' }, g, legend);
}

function periodPicker(onApply) {
  const from = el('input', { type: 'date', value: st.from }), to = el('input', { type: 'date', value: st.to });
  const preset = (n) => el('button', { type: 'button', onclick: () => { st.from = daysAgo(n - 1); st.to = daysAgo(0); onApply(); } }, t('days' + n));
  return el('div', { class: 'period' }, preset(7), preset(30), preset(90),
    el('label', {}, t('from'), ' ', from), el('label', {}, t('to'), ' ', to),
    el('button', { type: 'button', onclick: () => { st.from = from.value; st.to = to.value; onApply(); } }, t('apply')));
}

// Features per day and service or user: the bars' hover breakdown.
async function usageChart(by) {
  const rows = await get('/v1/reports/daily?' + q({ from: st.from, to: st.to, account: st.account, by: by + ',feature' }));
  return chart(rows, by, st.from, st.to);
}

// When the pool runs out at the last 7 days' rate (the 30 days' below), and whether that
// comes before the next reset brings the plan's allowance.
function runwayCard(pool, r) {
  if (!r) return null;
  const r7 = r.last_7_days, r30 = r.last_30_days;
  const date = (b) => b.runs_out_at ? when(b.runs_out_at).slice(0, 10) : t('not_out');
  const reset = (b) => b.before_reset === null || b.before_reset === undefined ? '' : ' · ' + t(b.before_reset ? 'before_reset' : 'after_reset');
  const soon = r7.before_reset === true;
  return el('div', { class: 'card' + (soon ? ' warn' : ''), 'data-runway': pool },
    el('div', { class: 'label' }, t('runway'), ' · ', pool), el('div', { class: 'value' }, date(r7)),
    el('div', { class: 'sub' }, `${t('rate7')} ${num(r7.per_day)}${t('per_day')}${reset(r7)}`),
    el('div', { class: 'sub' }, `${t('rate30')} ${num(r30.per_day)}${t('per_day')} · ${date(r30)}${reset(r30)}`));
}

async function overviewPage(main) {
  const b = st.balance;
  const cards = el('div', { class: 'cards' });
  for (const [pool, p] of Object.entries(b.pools)) {
    const total = Number(p.available) + Number(p.used_this_cycle);
    const bar = el('div', { class: 'bar' }, el('span'));
    bar.firstChild.style.width = (total > 0 ? Math.min(100, 100 * Number(p.used_this_cycle) / total) : 0) + '%';
    cards.append(
      el('div', { class: 'card', 'data-pool': pool }, el('div', { class: 'label' }, t('remaining'), ' · ', pool), el('div', { class: 'value' }, num(p.available)),
        el('div', { class: 'sub' }, Object.entries(p.by_kind).map(([k, v]) => `${k} ${num(v)}`).join(' · ')), bar),
      el('div', { class: 'card' }, el('div', { class: 'label' }, t('used_month'), ' · ', pool), el('div', { class: 'value' }, num(p.used_this_cycle))),
      el('div', { class: 'card' }, el('div', { class: 'label' }, t('expiring'), ' · ', pool), el('div', { class: 'value' }, num(p.expiring_within_14_days)),
        Number(p.shortfall) ? el('div', { class: 'sub' }, t('shortfall'), ' ', num(p.shortfall)) : null),
      runwayCard(pool, p.runway));
  }
  // The 80% warning [002] with the cheapest way to cover a month at the recent rate.
  const advice = el('div', { id: 'advice' });
  for (const [pool, p] of Object.entries(b.pools)) {
    const warn = p.included_used_percent !== null && p.included_used_percent !== undefined && p.included_used_percent >= 80;
    if (!warn && !p.recommendation) continue;
    const r = p.recommendation;
    advice.append(el('div', { class: 'notice advice', 'data-recommendation': r ? r.action : 'none' },
      warn ? el('strong', {}, t('included_warning', { percent: p.included_used_percent, pool })) : null,
      warn && r ? ' ' : null,
      r ? el('span', {}, t('recommended'), ': ', st.lang === 'ko' ? r.text_ko : r.text_en) : null));
  }
  const plan = b.plan ? `${t('plan')}: ${b.plan.name} · ${t('cycle')} ${b.plan.cycle} · ${when(b.plan.cycle_start)} – ${when(b.plan.cycle_end)}` : t('no_plan') + ' · ' + when(b.cycle_start);
  main.append(el('h2', {}, st.account), el('p', { class: 'muted', id: 'plan' }, plan, ' · ', t('flex'), ': ', b.flex.enabled ? t('on') : t('off'), ` (${num(b.flex.used)} / ${num(b.flex.threshold)})`), advice, cards,
    el('h2', {}, t('by_service')), periodPicker(() => render()), await usageChart('service'));
}

async function usagePage(main) {
  main.append(periodPicker(() => render()), el('h2', {}, t('by_service')), await usageChart('service'), el('h2', {}, t('by_user')), await usageChart('user'));
  const rows = await get('/v1/reports/daily?' + q({ from: st.from, to: st.to, account: st.account, by: 'service,user' }));
  main.append(el('h2', {}, t('usage')), table([
    { label: 'day', get: (r) => r.day }, { label: 'service', get: (r) => r.service }, { label: 'user', get: (r) => r.user },
    { label: 'calls', get: (r) => r.calls, num: 1 }, { label: 'failed', get: (r) => r.failed_calls, num: 1 }, { label: 'credits', get: (r) => r.credits, num: 1 }], rows));
}

async function historyPage(main) {
  const [all, bought] = await Promise.all([get(`/v1/accounts/${acct()}/history`), get(`/v1/accounts/${acct()}/history?purchases=true`)]);
  const cols = [{ label: 'time', get: (r) => when(r.time) }, { label: 'type', get: (r) => r.type }, { label: 'pool', get: (r) => r.pool },
    { label: 'credits', get: (r) => r.credits, num: 1 }, { label: 'expires', get: (r) => r.expires_at === 'never' ? t('never') : when(r.expires_at) }, { label: 'comment', get: (r) => r.comment }];
  main.append(el('h2', {}, t('credit_history')), table(cols, all),
    el('h2', {}, t('purchases')), table(cols.concat([{ label: 'reference', get: (r) => r.payment_reference }]), bought));
}

async function ledgerPage(main) {
  const page = await api(`/v1/accounts/${acct()}/ledger?` + q({ limit: 100, cursor: st.cursor }));
  const download = el('button', { type: 'button', onclick: async () => {
    const r = await api(`/v1/accounts/${acct()}/ledger?limit=1000`, 'text/csv');
    const a = el('a', { href: URL.createObjectURL(new Blob([r.text], { type: 'text/csv' })), download: `ledger-${st.account}.csv` });
    a.click();
  } }, t('csv'));
  main.append(el('h2', {}, t('ledger')), download, table([
    { label: 'time', get: (r) => when(r.time) }, { label: 'user', get: (r) => r.user }, { label: 'feature', get: (r) => r.type === 'usage' ? r.feature + (r.variant ? '/' + r.variant : '') : r.type + ' ' + r.lot },
    { label: 'credits', get: (r) => r.credits, num: 1 }, { label: 'paid_by', get: (r) => r.paid.map((p) => p.kind).join(', ') },
    { label: 'comment', get: (r) => r.comment }, { label: 'status', get: (r) => r.status },
    { label: 'hold', get: (r) => r.hold ? `${r.hold.id}: ${t('hold_' + r.hold.outcome)} (${t('held')} ${num(r.hold.held)})` : '' }], page.json));
  if (page.next) main.append(el('p', {}, el('button', { type: 'button', onclick: () => { st.cursor = page.next; render(); } }, t('more'))));
}

// The summary of a day, a month or a custom range of days (inclusive), as [004] asks; the
// API takes `month` or `from` and `to`.
async function monthlyPage(main) {
  const span = el('select', { id: 'span' }, ['day', 'month', 'range'].map((s) => {
    const o = el('option', { value: s }, t(s)); if (s === st.span) o.selected = true; return o;
  }));
  const day = el('input', { type: 'date', value: st.day, id: 'sum-day' });
  const month = el('input', { type: 'month', value: st.month, id: 'sum-month' });
  const from = el('input', { type: 'date', value: st.from, id: 'sum-from' }), to = el('input', { type: 'date', value: st.to, id: 'sum-to' });
  const inputs = { day: [el('label', {}, t('day'), ' ', day)], month: [el('label', {}, t('month'), ' ', month)],
    range: [el('label', {}, t('from'), ' ', from), el('label', {}, t('to'), ' ', to)] };
  const box = el('span');
  const show = () => box.replaceChildren(...inputs[span.value]);
  span.addEventListener('change', show);
  show();
  main.append(el('div', { class: 'period' }, el('label', {}, t('period_of'), ' ', span), box,
    el('button', { type: 'button', onclick: () => {
      st.span = span.value; st.day = day.value; st.month = month.value; st.from = from.value; st.to = to.value; render();
    } }, t('apply'))));
  const [params, label] = st.span === 'day' ? [{ from: st.day, to: st.day }, st.day]
    : st.span === 'range' ? [{ from: st.from, to: st.to }, `${st.from} – ${st.to}`]
      : [{ month: st.month }, st.month];
  const rows = await get('/v1/reports/monthly?' + q(Object.assign(params, { account: st.account })));
  const flat = rows.flatMap((r) => [['free', r.free], ['purchased', r.purchased]].map(([k, m]) => Object.assign({ pool: r.pool, side: k, kind: t(k) }, m)));
  main.append(el('h2', { id: 'summary-title', 'data-span': st.span }, t(st.span === 'day' ? 'summary_day' : 'monthly'), ' ', label), table([
    { label: 'pool', get: (r) => r.pool }, { label: 'type', get: (r) => r.kind }, { label: 'carried', get: (r) => r.carried_forward, num: 1 },
    { label: 'allocated', get: (r) => r.allocated, num: 1 }, { label: 'consumed', get: (r) => r.consumed, num: 1 }, { label: 'expired', get: (r) => r.expired, num: 1 },
    { label: 'voided', get: (r) => r.voided, num: 1 }, { label: 'remaining', get: (r) => r.remaining, num: 1 }], flat, (r) => r.pool + '/' + r.side));
}

async function matrixPage(main) {
  const [m, plans] = await Promise.all([get('/v1/matrix'), get('/v1/plans')]);
  const rows = [];
  for (const v of m.versions) for (const [f, p] of Object.entries(v.features)) {
    if (p.variants) for (const [vn, c] of Object.entries(p.variants)) rows.push({ v: v.name, from: v.effective_from, f, pool: p.pool, variant: vn, cost: c, unit: 'call' });
    else rows.push({ v: v.name, from: v.effective_from, f, pool: p.pool, variant: '', cost: p.per_unit !== undefined ? p.per_unit : (p.cost || 0), unit: p.unit || 'call' });
  }
  main.append(el('h2', {}, t('matrix')), table([{ label: 'version', get: (r) => r.v }, { label: 'effective', get: (r) => when(r.from) }, { label: 'feature', get: (r) => r.f },
    { label: 'pool', get: (r) => r.pool }, { label: 'variant', get: (r) => r.variant }, { label: 'credits', get: (r) => r.cost, num: 1 }, { label: 'unit', get: (r) => r.unit }], rows),
  el('h2', {}, t('plans')), table([{ label: 'plan', get: (r) => r[0] }, { label: 'per_cycle', get: (r) => r[1].credits, num: 1 }, { label: 'pool', get: (r) => r[1].pool }, { label: 'period', get: (r) => r[1].period }], Object.entries(plans)));
}

// A notice on every page when a low-credit alert fired recently.
async function notice() {
  const box = $('notice');
  box.hidden = true;
  const [alerts, b] = [await get(`/v1/accounts/${acct()}/alerts`), st.balance];
  // This cycle's alerts, and any of the last 7 days (a cycle may just have turned over).
  const week = new Date(Date.now() - 7 * 864e5).toISOString().slice(0, 19);
  const since = b.cycle_start.slice(0, 19) < week ? b.cycle_start.slice(0, 19) : week;
  // Reset notices (a new cycle's credits) are news, not a low-credit alert.
  const recent = alerts.filter((a) => a.kind !== 'reset' && a.time.slice(0, 19) >= since).pop();
  if (recent) {
    box.textContent = t('alert_notice', { pool: recent.pool, balance: num(recent.balance), threshold: num(recent.threshold), kind: recent.kind, time: when(recent.time) });
    box.hidden = false;
  }
}

async function render() {
  document.body.dataset.state = 'loading';
  document.documentElement.lang = st.lang;
  for (const e of document.querySelectorAll('[data-t]')) e.textContent = t(e.dataset.t);
  const nav = $('nav');
  nav.replaceChildren(...PAGES.map((p) => el('a', { href: '#page=' + p, class: p === st.page ? 'active' : '' }, t(p))));
  const main = $('main');
  main.replaceChildren();
  $('error').hidden = true;
  try {
    if (!st.account) throw new ApiError(404, t('nothing'));
    // The balance first: it names the account's time zone, which every page's times use.
    st.balance = await get(`/v1/accounts/${acct()}/balance`);
    st.tz = st.balance.timezone || 'UTC';
    await Promise.all([notice(), { overview: overviewPage, usage: usagePage, history: historyPage, ledger: ledgerPage, monthly: monthlyPage, matrix: matrixPage }[st.page](main)]);
  } catch (e) {
    $('error').textContent = e.message;
    $('error').hidden = false;
    if (e.status === 401) { sessionStorage.removeItem('tally.key'); st.key = ''; start(); return; }
  }
  document.body.dataset.state = 'ready';
  document.body.dataset.page = st.page;
}

async function start() {
  const signedIn = !!st.key;
  $('login').hidden = signedIn;
  $('main').hidden = !signedIn;
  for (const id of ['nav', 'account', 'logout']) $(id).hidden = !signedIn;
  if (!signedIn) { for (const e of document.querySelectorAll('[data-t]')) e.textContent = t(e.dataset.t); document.body.dataset.state = 'ready'; return; }
  try {
    // The list comes in pages (serve.page_size each): follow them all.
    const accounts = [];
    for (let cursor = null, first = true; first || cursor; first = false) {
      const page = await api('/v1/accounts?' + q({ cursor }));
      accounts.push(...page.json);
      cursor = page.next;
    }
    const select = $('account');
    select.replaceChildren(...accounts.map((a) => el('option', { value: a }, a)));
    if (!accounts.includes(st.account)) st.account = accounts[0] || '';
    select.value = st.account;
  } catch (e) {
    if (e.status === 401) { sessionStorage.removeItem('tally.key'); st.key = ''; $('error').textContent = t('bad_key'); $('error').hidden = false; start(); return; }
    throw e;
  }
  await render();
}

// The fragment carries the page, account, language and period, so pages can be linked; a
// `key` in it is taken once into this tab's storage and removed from the address.
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get('key')) { st.key = h.get('key'); sessionStorage.setItem('tally.key', st.key); h.delete('key'); history.replaceState(null, '', '#' + h.toString()); }
  if (PAGES.includes(h.get('page'))) st.page = h.get('page');
  if (h.get('account')) st.account = h.get('account');
  if (T[h.get('lang')]) st.lang = h.get('lang');
  st.from = h.get('from') || st.from || daysAgo(29);
  st.to = h.get('to') || st.to || daysAgo(0);
  st.month = h.get('month') || st.month || daysAgo(0).slice(0, 7);
  st.day = h.get('day') || st.day || daysAgo(0);
  if (['day', 'month', 'range'].includes(h.get('span'))) st.span = h.get('span');
  $('lang').value = st.lang;
}

window.addEventListener('hashchange', () => { readHash(); st.cursor = null; render(); });
$('lang').addEventListener('change', (e) => { st.lang = e.target.value; localStorage.setItem('tally.lang', st.lang); render(); });
$('account').addEventListener('change', (e) => { st.account = e.target.value; st.cursor = null; render(); });
$('logout').addEventListener('click', () => { sessionStorage.removeItem('tally.key'); st.key = ''; start(); });
$('login').addEventListener('submit', (e) => { e.preventDefault(); st.key = $('key').value.trim(); sessionStorage.setItem('tally.key', st.key); start(); });
readHash();
start();
