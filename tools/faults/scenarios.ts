/** The fault campaign's data (faults.ts runs it): runtimes, scenarios, workloads, bad-input corpus, known bugs.
 * No I/O. Canary values (a token, a marker in every email and in every property value) make leaks greppable.
 */
import fc from 'fast-check'

import { BAD_CONFIGS, badConfig, errorAnywhere } from '../../__tests__/fixtures/bad-configs'
import { QUEUE_MAX_LENGTH } from '../../index'
import type { EmulatorOptions } from '../intercom/emulator'
import { RuleCode, ruleOf } from '../intercom/rules'
import type { HarnessEvent, HarnessMode } from '../runtime/harness'

// --- Canaries ---

/** The API key of every run: it must reach Intercom's Authorization header and nothing else. */
export const CANARY_TOKEN = 'tok_canary_S3CRET_7f1e09'
/** Inside every email the campaign and the corpus send: an email in a log line shows up by this. */
export const EMAIL_MARK = 'canarymail'
/** Inside every string property value: values go to Intercom, never to logs. */
export const VALUE_MARK = 'canaryvalue'

/** Any email-shaped text; the plugin logs none, whatever the marker. */
export const EMAIL_SHAPE = /[^\s@<>"'`]+@[^\s@<>"'`]+\.[a-z]{2,}/i

// --- Runtimes: the three ways PostHog has run plugins (see REFERENCE.md) ---

type RuntimeName = 'plugin-server' | 'plugin-server-2024' | 'cdp'

/** The HTTP client under the plugin: node-fetch 2 (2021-23) or the standard, undici-based fetch. */
export type ClientName = 'undici' | 'node-fetch'

export interface Runtime {
    name: RuntimeName
    mode: HarnessMode
    /** Does PostHog retry a RetryError from onEvent? */
    retries: boolean
    client: ClientName
}

// prettier-ignore
export const RUNTIMES: readonly Runtime[] = [
    { name: 'plugin-server', mode: 'plugin-server', retries: true, client: 'node-fetch' },
    { name: 'plugin-server-2024', mode: 'plugin-server', retries: false, client: 'undici' },
    { name: 'cdp', mode: 'cdp', retries: false, client: 'undici' },
]

/** The plugin asks for a 10 s timeout; in the 'timeout' scenarios the campaign's HTTP client cuts it to this. */
export const CLIENT_TIMEOUT_MS = 300
/** Every other scenario keeps 10 s: a short limit would inject timeouts of its own on a loaded machine. */
export const FULL_TIMEOUT_MS = 10_000
/** Latency of the "slow Intercom" phase: just over the client timeout. */
const SLOW_LATENCY_MS = 450

// --- Fault scenarios ---

/** What a scenario must visibly inflict, so that a run that injected nothing cannot pass for a proof. */
export type FaultKind = '5xx' | '429' | 'timeout' | 'dropped' | 'created' | '401' | '422' | 'none'

export interface FaultScenario {
    name: string
    fault: FaultKind
    /** What is simulated, and what the plugin must do about it. */
    summary: string
    /** Emulator faults from the first event on (setupPlugin's GET /me runs before them). */
    faults: Partial<EmulatorOptions>
    /** Each applied once the emulator has seen `share` × events requests: things change mid-run. */
    midRun?: readonly { share: number; patch: Partial<EmulatorOptions> }[]
    /** Applied after the events, before the retry queue is drained; faults not named here persist. */
    recover?: Partial<EmulatorOptions>
    workers: number
    /** Events are sent in this many consecutive batches, like a stream over time. */
    waves: number
    /** `seeded`: every email is an Intercom user (some also a lead); `unknown`: none exists yet. */
    contacts: 'seeded' | 'unknown'
    /** Distinct PostHog event names, and extra plugin config. */
    eventNames: number
    config?: Record<string, string>
    /** Failures here are permanent (401, 422): an event is tried at most once. */
    permanent?: boolean
    /** Upper bound of POST /contacts/search per distinct email, when the scenario is about lookups. */
    searchesPerEmail?: number
}

// prettier-ignore
export const SCENARIOS: readonly FaultScenario[] = [
    { name: '5xx-burst', fault: '5xx', workers: 2, waves: 2, contacts: 'seeded', eventNames: 4,
        summary: '20% of calls answer 500/502/503 while events come in; the burst is over when the queue drains',
        faults: { errorRate: 0.2 }, recover: { errorRate: 0 } },
    { name: '429-storm', fault: '429', workers: 3, waves: 1, contacts: 'seeded', eventNames: 3,
        summary: '20 calls a 1 s window shared by 3 workers: 429s with X-RateLimit-Reset',
        faults: { rateLimit: 20, windowSeconds: 1 } },
    // Mid-run, once contacts are cached, so that event POSTs time out after Intercom stored them.
    { name: 'slow-timeouts', fault: 'timeout', workers: 2, waves: 2, contacts: 'seeded', eventNames: 3,
        summary: `answers take ${SLOW_LATENCY_MS} ms, past the client timeout, for a third of the run`,
        faults: {}, midRun: [{ share: 0.3, patch: { latencyMs: SLOW_LATENCY_MS } }, { share: 0.6, patch: { latencyMs: 0 } }] },
    { name: 'dropped-connections', fault: 'dropped', workers: 2, waves: 2, contacts: 'seeded', eventNames: 3,
        summary: '15% of connections are closed without an answer', faults: { dropRate: 0.15 } },
    { name: 'search-lag', fault: 'created', workers: 2, waves: 2, contacts: 'unknown', eventNames: 3, searchesPerEmail: 4,
        summary: 'unknown emails, contacts created as leads by the plugin, search lags them 1.5 s',
        faults: { searchLagMs: 1500 }, config: { createContacts: 'as lead' } },
    { name: 'token-revoked', fault: '401', workers: 2, waves: 2, contacts: 'seeded', eventNames: 3, permanent: true,
        summary: '10% 5xx, then the token is revoked halfway: 401 from then on, queue included',
        faults: { errorRate: 0.1 }, midRun: [{ share: 0.5, patch: { tokens: ['a-token-nobody-has'] } }] },
    { name: 'event-name-limit', fault: '422', workers: 2, waves: 2, contacts: 'seeded', eventNames: 6, permanent: true,
        summary: 'the workspace allows 3 event names; 6 are sent: 422 for the rest', faults: { maxEventNames: 3 } },
    // Waves no larger than the number of people: a person's first event is not raced by their second.
    { name: 'shared-cache', fault: 'none', workers: 4, waves: 6, contacts: 'seeded', eventNames: 3, searchesPerEmail: 1.25,
        summary: '4 workers, one shared cache, no faults: one contact lookup per email', faults: {} },
]

// --- Workload: the events of one scenario run, and what Intercom should hold afterwards ---

export const IGNORED_DOMAIN = 'ignored.example'

/** Plugin config common to every scenario; metadata carries canary values to prove they stay out of logs. */
export function campaignConfig(scenario: FaultScenario): Record<string, string> {
    return {
        intercomApiKey: CANARY_TOKEN,
        region: 'US',
        triggeringEvents: eventNames(scenario.eventNames).join(','),
        eventNameMapping: 'evt_0:renamed_evt_0',
        metadataProperties: 'plan,note,revenue,currency',
        ignoredEmailDomains: IGNORED_DOMAIN,
        ...scenario.config,
    }
}

export function eventNames(count: number): string[] {
    return Array.from({ length: count }, (_, i) => `evt_${i}`)
}

/** A valid event, or the reason the plugin must skip it with. */
export type EventKind = 'valid' | 'no valid email' | 'ignored email domain'

export interface PlannedEvent {
    event: HarnessEvent
    kind: EventKind
    /** Lower-case email of a valid event. */
    email?: string
    /** Intercom's dedup key parts for a valid event. */
    name?: string
    createdAt?: number
}

export interface Workload {
    events: PlannedEvent[]
    emails: string[]
    /** Emails that also have a lead in Intercom: the event must still land on the user. */
    emailsWithLead: string[]
}

/** About one person per 6 events, coprime with 6 so that round-robin spreads each person's events over every
 * worker (2, 3 or 4 of them): lookups and caches are then shared, not per worker. */
export function peopleFor(size: number): number {
    let people = Math.max(5, Math.round(size / 6))
    while (people % 2 === 0 || people % 3 === 0) people++
    return people
}

/** Every 20th event has no email and every 25th an ignored domain: they must be skipped, never sent. */
function kindOf(index: number): EventKind {
    if (index % 20 === 19) return 'no valid email'
    if (index % 25 === 24) return 'ignored email domain'
    return 'valid'
}

/**
 * `size` events over peopleFor(size) people, each with its own created_at (recent, so that Intercom's search
 * lag is worth waiting for), so that each stored event maps back to exactly one sent event.
 */
export function buildWorkload(scenario: FaultScenario, size: number, nowMs: number): Workload {
    const emails = Array.from({ length: peopleFor(size) }, (_, i) => `person${i}.${EMAIL_MARK}@example.com`)
    const names = eventNames(scenario.eventNames)
    const firstSecond = Math.floor(nowMs / 1000) - size - 5
    const events = Array.from({ length: size }, (_, i): PlannedEvent => {
        const kind = kindOf(i)
        const person = i % emails.length
        const ignored = `person${person}.${EMAIL_MARK}@mail.${IGNORED_DOMAIN}`
        const email = kind === 'no valid email' ? undefined : kind === 'valid' ? emails[person] : ignored
        const name = names[i % names.length]
        const createdAt = firstSecond + i
        const properties = { plan: 'pro', note: `${VALUE_MARK}-${i}`, revenue: 19.99, currency: 'eur' }
        const event: HarnessEvent = {
            uuid: `018f0000-0000-7000-8000-${i.toString(16).padStart(12, '0')}`,
            event: name,
            distinct_id: `person-${person}`,
            timestamp: new Date(createdAt * 1000).toISOString(),
            properties: { ...properties, ...(email ? { email } : {}) },
        }
        // A valid event's `name` is the one Intercom stores, after the mapping of campaignConfig.
        return kind === 'valid'
            ? { event, kind, email, name: name === 'evt_0' ? 'renamed_evt_0' : name, createdAt }
            : { event, kind }
    })
    return { events, emails, emailsWithLead: emails.filter((_, i) => i % 5 === 2) }
}

// --- Known plugin bugs found by this campaign: rules they break, so that tests can mark them ---

/** Plugin bugs the corpus hits, by the rules they break: none (huge numbers, far-off timestamps, odd names fixed). */
export const KNOWN_BUGS: readonly { id: string; summary: string; rules: RuleCode[] }[] = []

export function knownBugOf(text: string) {
    const rule = ruleOf(text)
    return rule ? KNOWN_BUGS.find((bug) => bug.rules.includes(rule)) : undefined
}

// --- Bad-input corpus: events ---

/** Skip reasons the plugin documents (README, "What is skipped, and why"). */
export const SKIP_REASONS = [
    'not a triggering event',
    'Intercom echo event',
    'no valid email',
    'ignored email domain',
    'invalid timestamp',
    'no Intercom contact',
] as const

export type Expectation =
    | { status: 'delivered' }
    | { status: 'skipped'; reason: (typeof SKIP_REASONS)[number] }
    /** Generated cases: any documented outcome, valid bodies, no crash. */
    | { status: 'any' }

/** The runtimes the bad-input corpus runs in: with a cache and node-fetch, or with meta.fetch and person. */
export type SandboxRuntime = 'plugin-server' | 'cdp'
export const SANDBOX_RUNTIMES: readonly SandboxRuntime[] = ['plugin-server', 'cdp']

export interface BadEventCase {
    name: string
    /** The event exactly as onEvent receives it (PostHog's ProcessedPluginEvent, possibly malformed). */
    event: Record<string, unknown>
    /** Person properties (the cdp executor passes them). */
    person?: Record<string, unknown>
    config?: Record<string, string>
    expect: Expectation
    /** Id of a KNOWN_BUGS entry this case currently hits. */
    knownBug?: string
    /** Only these runtimes (default: both). */
    runtimes?: readonly SandboxRuntime[]
}

/** Everything the corpus sends: '*' pushes every property through the metadata builder. */
export const CORPUS_CONFIG: Record<string, string> = {
    intercomApiKey: CANARY_TOKEN,
    triggeringEvents: 'signed_up,$identify,purchase,[Intercom] echo',
    metadataProperties: '*',
    ignoredEmailDomains: IGNORED_DOMAIN,
}

/** Contact sync on, so that person properties reach PUT /contacts too. */
export const SYNC_CONFIG: Record<string, string> = {
    contactSync: 'create or update contacts',
    personProperties: 'plan,signup_date,nested,big:Big number,created_at',
    externalId: 'distinct_id',
    createAttributes: 'Yes',
}

export const GOOD_EMAIL = `ada.${EMAIL_MARK}@example.com`
const RECENT = '2024-05-01T12:00:00.000Z'

export function corpusEvent(overrides: Record<string, unknown> = {}): Record<string, unknown> {
    return {
        event: 'signed_up',
        distinct_id: 'person-1',
        uuid: '018f0000-0000-7000-8000-00000000bad0',
        team_id: 1,
        ip: null,
        timestamp: RECENT,
        properties: { email: GOOD_EMAIL, plan: `${VALUE_MARK}-plan` },
        ...overrides,
    }
}

const withProps = (properties: unknown, extra: Record<string, unknown> = {}) =>
    corpusEvent({ properties, ...extra })
const withEmail = (email: unknown) => withProps({ email, plan: `${VALUE_MARK}-plan` })
const delivered: Expectation = { status: 'delivered' }
const skipped = (reason: (typeof SKIP_REASONS)[number]): Expectation => ({ status: 'skipped', reason })

function deeplyNested(depth: number): Record<string, unknown> {
    let value: Record<string, unknown> = { leaf: `${VALUE_MARK}-leaf` }
    for (let i = 0; i < depth; i++) value = { next: value }
    return value
}

const manyProperties = (count: number) => ({
    email: GOOD_EMAIL,
    ...Object.fromEntries(Array.from({ length: count }, (_, i) => [`p${i}`, `${VALUE_MARK}-${i}`])),
})

/** JSON.parse makes `__proto__` an own key, as PostHog's event parsing would. */
const protoKeys = JSON.parse(
    `{"email":"${GOOD_EMAIL}","__proto__":{"polluted":"${VALUE_MARK}"},"constructor":"${VALUE_MARK}-c","prototype":"${VALUE_MARK}-p","hasOwnProperty":"${VALUE_MARK}-h","toString":"${VALUE_MARK}-t"}`
) as Record<string, unknown>

/** The hand-written corpus: every case names what it probes and what must come of it. */
// prettier-ignore
export const BAD_EVENT_CASES: readonly BadEventCase[] = [
    // Emails: where they are, what they look like.
    { name: 'email missing', event: withProps({ plan: 'x' }), expect: skipped('no valid email') },
    { name: 'email empty', event: withEmail(''), expect: skipped('no valid email') },
    { name: 'email whitespace', event: withEmail(' \t\n '), expect: skipped('no valid email') },
    { name: 'email null', event: withEmail(null), expect: skipped('no valid email') },
    { name: 'email number', event: withEmail(42), expect: skipped('no valid email') },
    { name: 'email boolean', event: withEmail(true), expect: skipped('no valid email') },
    { name: 'email object', event: withEmail({ address: GOOD_EMAIL }), expect: skipped('no valid email') },
    { name: 'email array', event: withEmail([GOOD_EMAIL]), expect: skipped('no valid email') },
    { name: 'email NaN', event: withEmail(NaN), expect: skipped('no valid email') },
    { name: 'email without domain', event: withEmail(`${EMAIL_MARK}@`), expect: skipped('no valid email') },
    { name: 'email without local part', event: withEmail('@example.com'), expect: skipped('no valid email') },
    { name: 'email without TLD', event: withEmail(`${EMAIL_MARK}@example`), expect: skipped('no valid email') },
    { name: 'email 1-letter TLD', event: withEmail(`${EMAIL_MARK}@example.c`), expect: skipped('no valid email') },
    { name: 'email two @', event: withEmail(`${EMAIL_MARK}@@example.com`), expect: skipped('no valid email') },
    { name: 'email with inner space', event: withEmail(`a ${EMAIL_MARK}@example.com`), expect: skipped('no valid email') },
    { name: 'email in angle brackets', event: withEmail(`<${GOOD_EMAIL}>`), expect: skipped('no valid email') },
    { name: 'email display name', event: withEmail(`Ada <${GOOD_EMAIL}>`), expect: skipped('no valid email') },
    { name: 'email local part > 64', event: withEmail(`${'a'.repeat(60)}${EMAIL_MARK}@example.com`), expect: skipped('no valid email') },
    { name: 'email > 254 characters', event: withEmail(`${EMAIL_MARK}@${'d'.repeat(250)}.com`), expect: skipped('no valid email') },
    { name: 'email 1 MB string', event: withEmail(`${EMAIL_MARK}${'x'.repeat(1_000_000)}@example.com`), expect: skipped('no valid email') },
    { name: 'email of dots only', event: withEmail('...@...'), expect: skipped('no valid email') },
    { name: 'email with trailing dot domain', event: withEmail(`${EMAIL_MARK}@example.com.`), expect: skipped('no valid email') },
    { name: 'email padded with whitespace', event: withEmail(`  ${GOOD_EMAIL.toUpperCase()} \n`), expect: delivered },
    { name: 'email unicode domain', event: withEmail(`jörg.${EMAIL_MARK}@bücher.de`), expect: delivered },
    { name: 'email unicode local part', event: withEmail(`ñandú.${EMAIL_MARK}@example.com`), expect: delivered },
    { name: 'email emoji local part', event: withEmail(`😀.${EMAIL_MARK}@example.com`), expect: delivered },
    { name: 'email plus tag', event: withEmail(`ada+tag.${EMAIL_MARK}@example.com`), expect: delivered },
    { name: 'email ignored domain', event: withEmail(`${EMAIL_MARK}@${IGNORED_DOMAIN}`), expect: skipped('ignored email domain') },
    { name: 'email ignored subdomain, upper case', event: withEmail(`${EMAIL_MARK}@Mail.IGNORED.Example`), expect: skipped('ignored email domain') },
    { name: 'email in $set only (event)', event: corpusEvent({ properties: {}, $set: { email: GOOD_EMAIL } }), expect: delivered },
    { name: 'email in properties.$set only', event: withProps({ $set: { email: GOOD_EMAIL } }), expect: delivered },
    { name: 'email in $set_once only', event: withProps({ $set_once: { email: GOOD_EMAIL } }), expect: delivered },
    { name: 'invalid email, valid one in $set', event: withProps({ email: 'nope', $set: { email: GOOD_EMAIL } }), expect: delivered },
    { name: 'email only in person properties', event: withProps({}), person: { email: GOOD_EMAIL }, expect: delivered, runtimes: ['cdp'] },
    { name: 'distinct_id is the email', event: corpusEvent({ properties: {}, distinct_id: GOOD_EMAIL }), expect: delivered },
    { name: 'distinct_id a number', event: corpusEvent({ properties: {}, distinct_id: 7 }), expect: skipped('no valid email') },
    { name: '$set is a string', event: withProps({ $set: `${VALUE_MARK}` }, { $set: `${VALUE_MARK}` }), expect: skipped('no valid email') },
    { name: '$set is an array', event: withProps({ $set: [GOOD_EMAIL] }, { $set: [GOOD_EMAIL] }), expect: skipped('no valid email') },
    { name: '$set is null', event: withProps({ $set: null }, { $set: null }), expect: skipped('no valid email') },
    // Property keys and values, money among them.
    { name: 'properties null', event: corpusEvent({ properties: null, distinct_id: GOOD_EMAIL }), expect: delivered },
    { name: 'properties missing', event: corpusEvent({ properties: undefined, distinct_id: GOOD_EMAIL }), expect: delivered },
    { name: 'properties a string', event: corpusEvent({ properties: `${VALUE_MARK}`, distinct_id: GOOD_EMAIL }), expect: delivered },
    { name: 'properties an array', event: corpusEvent({ properties: [`${VALUE_MARK}`], distinct_id: GOOD_EMAIL }), expect: delivered },
    { name: 'properties a number', event: corpusEvent({ properties: 5, distinct_id: GOOD_EMAIL }), expect: delivered },
    { name: 'huge string value (1 MB)', event: withProps({ email: GOOD_EMAIL, big: `${VALUE_MARK}${'x'.repeat(1_000_000)}` }), expect: delivered },
    { name: 'string cut inside a surrogate pair', event: withProps({ email: GOOD_EMAIL, s: `${VALUE_MARK}${'x'.repeat(243)}😀😀` }), expect: delivered },
    { name: 'lone surrogates', event: withProps({ email: GOOD_EMAIL, s: `${VALUE_MARK}\uD800x\uDC00` }), expect: delivered },
    { name: '10,000 properties', event: withProps(manyProperties(10_000)), expect: delivered },
    { name: 'nested 10,000 levels', event: withProps({ email: GOOD_EMAIL, deep: deeplyNested(10_000) }), expect: delivered },
    { name: 'nested small object', event: withProps({ email: GOOD_EMAIL, o: { a: `${VALUE_MARK}` } }), expect: delivered },
    { name: 'array value', event: withProps({ email: GOOD_EMAIL, list: [1, 2, `${VALUE_MARK}`] }), expect: delivered },
    { name: 'array of 10,000', event: withProps({ email: GOOD_EMAIL, list: Array.from({ length: 10_000 }, (_, i) => i) }), expect: delivered },
    { name: 'NaN, Infinity, -Infinity', event: withProps({ email: GOOD_EMAIL, a: NaN, b: Infinity, c: -Infinity }), expect: delivered },
    { name: '-0 and extreme finite numbers', event: withProps({ email: GOOD_EMAIL, z: -0, max: Number.MAX_VALUE, min: -Number.MAX_VALUE, tiny: Number.MIN_VALUE }), expect: delivered },
    { name: 'unsafe integers', event: withProps({ email: GOOD_EMAIL, n: Number.MAX_SAFE_INTEGER + 2 }), expect: delivered },
    { name: 'booleans and null', event: withProps({ email: GOOD_EMAIL, t: true, f: false, n: null }), expect: delivered },
    { name: '__proto__, constructor, prototype keys', event: withProps(protoKeys), expect: delivered },
    { name: 'keys with dots and dollars', event: withProps({ email: GOOD_EMAIL, 'a.b': `${VALUE_MARK}1`, 'c$d': `${VALUE_MARK}2`, '$$': `${VALUE_MARK}3`, '.': `${VALUE_MARK}4`, '$.': `${VALUE_MARK}5` }), expect: delivered },
    { name: 'empty and blank keys', event: withProps({ email: GOOD_EMAIL, '': `${VALUE_MARK}1`, '  ': `${VALUE_MARK}2` }), expect: delivered },
    { name: 'colliding keys a.b and a_b', event: withProps({ email: GOOD_EMAIL, 'a.b': `${VALUE_MARK}1`, a_b: `${VALUE_MARK}2` }), expect: delivered },
    { name: 'revenue as string with currency', event: withProps({ email: GOOD_EMAIL, revenue: '19.99', currency: 'EUR' }), expect: delivered },
    { name: 'revenue not a number', event: withProps({ email: GOOD_EMAIL, revenue: `${VALUE_MARK}`, currency: 'eur' }), expect: delivered },
    { name: 'revenue negative', event: withProps({ email: GOOD_EMAIL, revenue: -5.5, currency: 'usd' }), expect: delivered },
    { name: 'revenue NaN', event: withProps({ email: GOOD_EMAIL, revenue: NaN, currency: 'usd' }), expect: delivered },
    { name: 'revenue JPY fraction', event: withProps({ email: GOOD_EMAIL, revenue: 1999.5, currency: 'jpy' }), expect: delivered },
    { name: 'revenue KWD', event: withProps({ email: GOOD_EMAIL, price: 1.2345, currency: 'KWD' }), expect: delivered },
    { name: 'currency not ISO', event: withProps({ email: GOOD_EMAIL, revenue: 10, currency: 'euro' }), expect: delivered },
    { name: 'currency a number', event: withProps({ email: GOOD_EMAIL, revenue: 10, currency: 978 }), expect: delivered },
    { name: 'revenue 1e20 (amount beyond 2^53)', event: withProps({ email: GOOD_EMAIL, revenue: 1e20, currency: 'usd' }), expect: delivered },
    { name: 'revenue 1e307 (amount overflows to Infinity)', event: withProps({ email: GOOD_EMAIL, revenue: 1e307, currency: 'usd' }), expect: delivered },
    { name: '_date key ISO string', event: withProps({ email: GOOD_EMAIL, signup_date: '2024-01-01T00:00:00Z' }), expect: delivered },
    { name: '_date key garbage', event: withProps({ email: GOOD_EMAIL, signup_date: `${VALUE_MARK}` }), expect: delivered },
    { name: '_date key 1e300', event: withProps({ email: GOOD_EMAIL, signup_date: 1e300 }), expect: delivered },
    { name: 'rich-link-shaped object', event: withProps({ email: GOOD_EMAIL, link: { url: 'javascript:alert(1)', value: `${VALUE_MARK}` } }), expect: delivered },
    { name: 'URL values', event: withProps({ email: GOOD_EMAIL, $current_url: 'https://evil.example/x', site: 'http://evil.example' }), expect: delivered },
    // Timestamps.
    { name: 'timestamp missing', event: corpusEvent({ timestamp: undefined }), expect: delivered },
    { name: 'timestamp null', event: corpusEvent({ timestamp: null }), expect: delivered },
    { name: 'timestamp empty', event: corpusEvent({ timestamp: '' }), expect: delivered },
    { name: 'timestamp garbage', event: corpusEvent({ timestamp: 'yesterday-ish' }), expect: skipped('invalid timestamp') },
    { name: 'timestamp month 13', event: corpusEvent({ timestamp: '2024-13-45T00:00:00Z' }), expect: skipped('invalid timestamp') },
    { name: 'timestamp negative number', event: corpusEvent({ timestamp: -1 }), expect: skipped('invalid timestamp') },
    { name: 'timestamp before 1970', event: corpusEvent({ timestamp: '1969-12-31T23:59:59Z' }), expect: skipped('invalid timestamp') },
    { name: 'timestamp NaN', event: corpusEvent({ timestamp: NaN }), expect: skipped('invalid timestamp') },
    { name: 'timestamp Infinity', event: corpusEvent({ timestamp: Infinity }), expect: skipped('invalid timestamp') },
    { name: 'timestamp object', event: corpusEvent({ timestamp: {} }), expect: skipped('invalid timestamp') },
    { name: 'timestamp array', event: corpusEvent({ timestamp: [RECENT] }), expect: skipped('invalid timestamp') },
    { name: 'timestamp boolean', event: corpusEvent({ timestamp: true }), expect: skipped('invalid timestamp') },
    { name: 'timestamp epoch', event: corpusEvent({ timestamp: '1970-01-01T00:00:00Z' }), expect: delivered },
    { name: 'timestamp seconds number', event: corpusEvent({ timestamp: 1714564800 }), expect: delivered },
    { name: 'timestamp milliseconds number', event: corpusEvent({ timestamp: 1714564800123 }), expect: delivered },
    { name: 'timestamp digit string', event: corpusEvent({ timestamp: ' 1714564800 ' }), expect: delivered },
    { name: 'timestamp next year', event: corpusEvent({ timestamp: '2030-01-01T00:00:00Z' }), expect: delivered },
    { name: 'timestamp year 3000', event: corpusEvent({ timestamp: '3000-01-01T00:00:00Z' }), expect: skipped('invalid timestamp') },
    { name: 'timestamp 9.9e10 seconds', event: corpusEvent({ timestamp: 99_000_000_000 }), expect: skipped('invalid timestamp') },
    { name: 'timestamp 1e300', event: corpusEvent({ timestamp: 1e300 }), expect: skipped('invalid timestamp') },
    // Event names, uuids, and contact sync.
    { name: 'unknown event name', event: corpusEvent({ event: 'not_listed' }), expect: skipped('not a triggering event') },
    { name: 'event name with spaces around', event: corpusEvent({ event: ' signed_up ' }), expect: skipped('not a triggering event') },
    { name: 'event name in other case', event: corpusEvent({ event: 'SIGNED_UP' }), expect: skipped('not a triggering event') },
    { name: 'event name empty', event: corpusEvent({ event: '' }), expect: skipped('not a triggering event') },
    { name: 'Intercom echo, even when listed', event: corpusEvent({ event: '[Intercom] echo' }), expect: skipped('Intercom echo event') },
    { name: 'Intercom echo, not listed', event: corpusEvent({ event: '[Intercom] event.created' }), expect: skipped('Intercom echo event') },
    { name: 'event name missing', event: corpusEvent({ event: undefined }), expect: skipped('not a triggering event') },
    { name: 'event name a number', event: corpusEvent({ event: 42 }), expect: skipped('not a triggering event') },
    { name: 'event name an object', event: corpusEvent({ event: { name: 'signed_up' } }), expect: skipped('not a triggering event') },
    { name: 'uuid missing', event: corpusEvent({ uuid: undefined }), expect: delivered },
    { name: 'uuid a number', event: corpusEvent({ uuid: 12 }), expect: delivered },
    { name: 'uuid 10,000 characters', event: corpusEvent({ uuid: 'u'.repeat(10_000) }), expect: delivered },
    { name: '$identify with sync on', event: corpusEvent({ event: '$identify', $set: { email: GOOD_EMAIL, plan: `${VALUE_MARK}`, nested: { a: 1 }, signup_date: 'bad', big: 1e300 } }), config: SYNC_CONFIG, expect: delivered },
    { name: 'sync: created_at 1e300', event: corpusEvent({ event: '$identify', $set: { email: GOOD_EMAIL, created_at: 1e300 } }), config: SYNC_CONFIG, expect: delivered },
    { name: 'sync: $set_once a string', event: corpusEvent({ event: '$identify', $set: { email: GOOD_EMAIL }, $set_once: `${VALUE_MARK}` }), config: SYNC_CONFIG, expect: delivered },
    { name: 'sync: anonymous distinct_id', event: corpusEvent({ event: 'purchase', properties: { email: GOOD_EMAIL, $set: { plan: `${VALUE_MARK}` }, $device_id: 'person-1' } }), config: SYNC_CONFIG, expect: delivered },
    { name: 'explicit metadata list with odd keys', event: withProps(protoKeys), config: { metadataProperties: '__proto__,constructor,a.b:x.y,$current_url:$url,email' }, expect: delivered },
]

// --- Bad-input corpus: generated events ---

/** Emails the plugin must refuse or trim. */
const ODD_EMAILS = ['', ' ', `${EMAIL_MARK}@`, `@${EMAIL_MARK}.com`, `${EMAIL_MARK}@x`, ` ${GOOD_EMAIL} `]
const EMAIL_DOMAINS = ['example.com', 'example.com', 'example.com', 'bücher.de', IGNORED_DOMAIN]
const wellFormedEmail = fc
    .tuple(fc.stringMatching(/^[a-z0-9._+-]{1,20}$/), fc.constantFrom(...EMAIL_DOMAINS))
    .map(([local, domain]) => `${local}${EMAIL_MARK}@${domain}`)
const notAString = fc.oneof(
    fc.integer(),
    fc.double(),
    fc.boolean(),
    fc.constant(null),
    fc.constant(undefined)
)

/** Weighted so that about half the generated events get past the filters and build a request. */
const emailArbitrary: fc.Arbitrary<unknown> = fc.oneof(
    { weight: 12, arbitrary: wellFormedEmail },
    { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }).map((s) => `${s}${EMAIL_MARK}`) },
    { weight: 1, arbitrary: fc.constantFrom(...ODD_EMAILS) },
    { weight: 1, arbitrary: notAString },
    { weight: 1, arbitrary: fc.array(fc.constant(GOOD_EMAIL), { maxLength: 2 }) }
)

/** Keys that have broken plugins before: prototype names, Intercom's forbidden characters, money. */
const RISKY_KEYS =
    '__proto__ constructor prototype toString hasOwnProperty a.b $x $set email revenue price currency signup_date $current_url'

const keyArbitrary: fc.Arbitrary<string> = fc.oneof(
    fc.string({ maxLength: 12 }),
    fc.string({ unit: 'grapheme', maxLength: 6 }),
    fc.constantFrom('', ' ', ...RISKY_KEYS.split(' '))
)

const ODD_VALUES = ['eur', 'JPY', 'kwd', 'usd', '2024-01-01T00:00:00Z', `${VALUE_MARK}${'z'.repeat(300)}`]
const valueArbitrary: fc.Arbitrary<unknown> = fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 300 }).map((s) => `${VALUE_MARK}${s}`),
    fc.double(),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.constantFrom(...ODD_VALUES),
    fc.array(fc.oneof(fc.integer(), fc.constant(VALUE_MARK)), { maxLength: 80 }),
    fc.object({ maxDepth: 3, maxKeys: 4 })
)

const isoDate = fc
    .date({ min: new Date('1960-01-01'), max: new Date('2200-01-01'), noInvalidDate: true })
    .map((d) => d.toISOString())
const ODD_TIMESTAMPS = [undefined, null, '', 'now', '2024-02-30T00:00:00Z', NaN, Infinity]
const timestampArbitrary: fc.Arbitrary<unknown> = fc.oneof(
    { weight: 5, arbitrary: isoDate },
    { weight: 1, arbitrary: fc.integer({ min: -1e6, max: 4e12 }) },
    { weight: 1, arbitrary: fc.double({ min: -1e3, max: 1e10 }) },
    { weight: 1, arbitrary: fc.string({ maxLength: 25 }) },
    { weight: 1, arbitrary: fc.constantFrom(...ODD_TIMESTAMPS) }
)

const nameArbitrary: fc.Arbitrary<unknown> = fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom('signed_up', '$identify', 'purchase') },
    { weight: 1, arbitrary: fc.constantFrom('[Intercom] echo', '[Intercom] x', 'not_listed', '') },
    { weight: 1, arbitrary: fc.string({ maxLength: 15 }) }
)

/** Where the generated email goes: PostHog events carry it in any of these places ('property' twice as often). */
type EmailPlace = 'property' | '$set' | 'properties.$set' | '$set_once' | 'distinct_id' | 'nowhere'
const PLACES: EmailPlace[] = [
    'property',
    'property',
    '$set',
    'properties.$set',
    '$set_once',
    'distinct_id',
    'nowhere',
]

function placeEmail(place: EmailPlace, email: unknown, properties: Record<string, unknown>) {
    switch (place) {
        case 'property':
            return { properties: { ...properties, email } }
        case '$set':
            return { properties, $set: { email } }
        case 'properties.$set':
            return { properties: { ...properties, $set: { email } } }
        case '$set_once':
            return { properties, $set_once: { email } }
        case 'distinct_id':
            return { properties, distinct_id: email }
        case 'nowhere':
            return { properties }
    }
}

/** Random events: odd names, emails anywhere or nowhere, odd keys and values, odd timestamps. */
export const generatedEventArbitrary: fc.Arbitrary<Record<string, unknown>> = fc
    .record({
        event: nameArbitrary,
        email: emailArbitrary,
        place: fc.constantFrom(...PLACES),
        properties: fc.dictionary(keyArbitrary, valueArbitrary, { maxKeys: 25 }),
        timestamp: timestampArbitrary,
    })
    .map(({ event, email, place, properties, timestamp }) =>
        corpusEvent({ event, timestamp, ...placeEmail(place, email, properties) })
    )

/** A fixed, seeded sample of generated events, as cases expecting any documented outcome. */
export function generatedEventCases(seed: number, count: number): BadEventCase[] {
    return fc.sample(generatedEventArbitrary, { seed, numRuns: count }).map((event, i) => ({
        name: `generated #${i} (seed ${seed})`,
        event,
        expect: { status: 'any' },
    }))
}

// --- Bad-input corpus: config ---

export interface BadConfigCase {
    name: string
    config: Record<string, string>
    /** The setup error expected (a pattern of its message), or the Intercom host the plugin must use. */
    expect: { setupError: RegExp } | { host: string }
    /** The workspace's region as GET /me reports it; default: the region of the host asked. */
    workspaceRegion?: 'US' | 'Europe' | 'AU'
    /** GET /me answers 401. */
    rejectToken?: boolean
}

const base = { intercomApiKey: CANARY_TOKEN, triggeringEvents: 'signed_up' }
const US_HOST = 'api.intercom.io'
const EVIL = 'https://evil.example.com/hook'
const configError = (pattern: RegExp) => ({ setupError: pattern })

// prettier-ignore
export const BAD_CONFIG_CASES: readonly BadConfigCase[] = [
    // Refused at setup by parseConfig: the one table the config tests use too.
    ...BAD_CONFIGS.map((row) => ({ name: row.name, config: badConfig(row, CANARY_TOKEN), expect: configError(errorAnywhere(row)) })),
    { name: 'token padded', config: { ...base, intercomApiKey: ` ${CANARY_TOKEN} ` }, expect: { host: US_HOST } },
    { name: 'token rejected by Intercom', config: base, rejectToken: true, expect: configError(/rejected the API key \(401\)/) },
    { name: 'token that looks like a URL', config: { ...base, intercomApiKey: EVIL }, expect: { host: US_HOST } },
    { name: 'triggering events stray commas', config: { ...base, triggeringEvents: ',signed_up,, ,' }, expect: { host: US_HOST } },
    { name: 'triggering events empty, sync on', config: { ...base, triggeringEvents: '', contactSync: 'update existing contacts' }, expect: { host: US_HOST } },
    { name: 'triggering event that is a URL', config: { ...base, triggeringEvents: `signed_up,${EVIL}` }, expect: { host: US_HOST } },
    { name: 'region lower case, padded', config: { ...base, region: ' eu ' }, expect: { host: 'api.eu.intercom.io' } },
    { name: 'region AU', config: { ...base, region: 'AU' }, expect: { host: 'api.au.intercom.io' } },
    { name: 'region blank', config: { ...base, region: '  ' }, expect: { host: US_HOST } },
    { name: 'legacy EU switch', config: { ...base, useEuropeanDataStorage: 'Yes' }, expect: { host: 'api.eu.intercom.io' } },
    { name: 'legacy EU switch, odd value', config: { ...base, useEuropeanDataStorage: 'maybe' }, expect: { host: US_HOST } },
    { name: 'region differs from workspace', config: { ...base, region: 'EU' }, workspaceRegion: 'US', expect: configError(/hosted in the US region.*set "Region" to US/) },
    { name: 'mapping stray commas', config: { ...base, eventNameMapping: ',signed_up:joined,,' }, expect: { host: US_HOST } },
    { name: 'metadata star padded', config: { ...base, metadataProperties: ' * ' }, expect: { host: US_HOST } },
    { name: 'metadata stray commas', config: { ...base, metadataProperties: ',,plan,,' }, expect: { host: US_HOST } },
    { name: 'ignored domains odd', config: { ...base, ignoredEmailDomains: ' Example.com, .mail.org,,' }, expect: { host: US_HOST } },
    { name: 'email property a URL', config: { ...base, emailProperty: EVIL }, expect: { host: US_HOST } },
    { name: 'company group type a URL', config: { ...base, companyGroupType: EVIL }, expect: { host: US_HOST } },
    { name: 'unknown keys naming hosts', config: { ...base, host: 'evil.example.com', url: EVIL, baseUrl: EVIL, apiUrl: EVIL, proxy: EVIL }, expect: { host: US_HOST } },
]

// --- Variant scenarios: PostHog's six real runtimes (tools/runtime) as columns, with a real Redis ---

export type VariantScenarioName =
    'backlog-1000' | 'kill-9-mid-drain' | 'redis-restart' | 'queue-full-10000' | 'burst-10000-rate-limit'

export interface VariantScenario {
    name: VariantScenarioName
    summary: string
    /** The variants (1-6) it applies to: a queue needs a cache (1-4), the burst is about the CDP executor. */
    variants: readonly number[]
    /** Events of a full run (`npm run faults`). */
    events: number
    /** Events of the reduced run inside `npm test`; 0: not run there. */
    smallEvents: number
    /** Emulator rate limit per window (Intercom: 1,666 per 10 s), and the reduced run's, which a few events meet. */
    rateLimit?: number
    smallRateLimit?: number
    windowSeconds?: number
    /** Events in flight; the burst uses the benchmark's 4 workers × 8. */
    concurrency: number
}

// prettier-ignore
export const VARIANT_SCENARIOS: readonly VariantScenario[] = [
    { name: 'backlog-1000', variants: [1, 2, 3, 4], events: 1000, smallEvents: 50, concurrency: 10,
        summary: 'Intercom answers 503 while 1,000 events arrive (parked), then recovers; the queue drains' },
    { name: 'kill-9-mid-drain', variants: [1, 2, 3, 4], events: 1000, smallEvents: 200, concurrency: 1,
        summary: 'a worker process draining a parked backlog is killed with SIGKILL; a new worker finishes' },
    { name: 'redis-restart', variants: [1, 2, 3, 4], events: 1000, smallEvents: 60, concurrency: 4,
        summary: 'Redis is killed and restarted (empty, no persistence) while events flow and Intercom is healthy' },
    { name: 'queue-full-10000', variants: [1, 2, 3, 4], events: QUEUE_MAX_LENGTH + 50, smallEvents: 0, concurrency: 10,
        summary: 'Intercom is down while 10,050 events arrive: the queue holds 10,000, the rest are refused with a reason' },
    { name: 'burst-10000-rate-limit', variants: [5, 6], events: 10_000, smallEvents: 40, concurrency: 32,
        rateLimit: 1666, smallRateLimit: 25, windowSeconds: 10,
        summary: "10,000 events at once against Intercom's rate limit (1,666 calls / 10 s) in the current executor" },
]
