/**
 * The fault campaign: proves under faults, load and bad input that the plugin loses nothing, duplicates
 * nothing and leaks nothing.
 *
 * - Fault scenarios (tools/faults/scenarios.ts) run end to end: index.ts in PostHog's sandbox through the
 *   harness, in each runtime, against the Intercom emulator with seeded faults. Afterwards every valid
 *   event is either stored once in the emulator or reported (a failed event, a "Dropped queued event"
 *   log line, or still queued): `lost` counts the rest.
 * - The bad-input corpus runs the sandboxed plugin against a recording fake of Intercom that checks
 *   every request body against Intercom's rules.
 * - Every log line and error message of both is searched for the canary token, emails and values; every
 *   request's host must be one of Intercom's three.
 *
 * - The variant matrix (tools/runtime/campaign.ts): the scenarios of VARIANT_SCENARIOS in PostHog's six
 *   real runtimes, with a real Redis and, for kill -9, a real worker process.
 *
 * `npm run faults [-- --events 200 --out faults-results.json --scenario 429-storm --variants 1,6]` prints
 * the tables and writes the JSON (`--help` lists the options); __tests__/faults.test.ts runs a reduced
 * campaign inside `npm test`.
 */
import { writeFileSync } from 'node:fs'

import { Emulator, RecordedRequest, startEmulator, StoredContact, StoredEvent } from '../intercom/emulator'
import { createIntercom, STAND_IN_OPTIONS } from '../intercom/model'
import { requestViolations } from '../intercom/rules'
import { formatTable as formatColumns } from '../lib/report'
import {
    CacheStore,
    createHarness,
    createMemoryStorage,
    createMemoryStore,
    createPluginCache,
    describeError,
    DrainResult,
    EventRecord,
    Harness,
    HarnessSummary,
    LogLine,
} from '../runtime/harness'
import {
    cdpFetch,
    ConsoleLike,
    FetchFn,
    FetchInit,
    FetchResponse,
    hostNodeFetch,
    isIntercomHost,
    loadPlugin,
    PluginExports,
    PluginMeta,
    redirectingFetch,
    regionNameOf,
    toHeaderRecord,
} from '../runtime/load-plugin'
import {
    BAD_CONFIG_CASES,
    BAD_EVENT_CASES,
    BadConfigCase,
    BadEventCase,
    buildWorkload,
    CALLS_PER_TRY,
    campaignConfig,
    ClientName,
    CANARY_TOKEN,
    CLIENT_TIMEOUT_MS,
    CONCURRENCY,
    CORPUS_CONFIG,
    corpusEvent,
    DELAY_SCALE,
    EMAIL_MARK,
    EMAIL_SHAPE,
    EXPECTED_SKIP,
    FaultKind,
    FaultScenario,
    generatedEventCases,
    knownBugOf,
    MAX_DRAIN_ROUNDS,
    MINUTE_MS,
    PlannedEvent,
    QUEUE_MAX_ATTEMPTS,
    Runtime,
    RUNTIMES,
    RuntimeName,
    SANDBOX_RUNTIMES,
    SandboxRuntime,
    SCENARIOS,
    SKIP_REASONS,
    VALUE_MARK,
    VARIANT_SCENARIOS,
    Workload,
} from './scenarios'
import { numberFlag } from '../lib/flags'
import { formatVariantMatrix, runVariantScenario, VariantScenarioResult } from '../runtime/campaign'
import { isVariantId, VARIANT_IDS, VariantId } from '../runtime/variants'

// ---------------------------------------------------------------------------------------------------
// HTTP: a client with the campaign's compressed timeout, and an audit of every host asked for
// ---------------------------------------------------------------------------------------------------

/**
 * The standard fetch (2024-25 plugin server, cdp executor), which ignores `timeout`: its own limit (10 s in
 * PostHog) is played here by `timeoutMs`, and a caller's signal (the cdp adapter's) still applies.
 */
function undiciClient(timeoutMs: number): FetchFn {
    return (input, init: FetchInit = {}) => {
        const timeout = AbortSignal.timeout(timeoutMs)
        return fetch(String(input), {
            method: init.method,
            headers: toHeaderRecord(init.headers),
            body: init.body,
            redirect: init.redirect,
            signal: init.signal ? AbortSignal.any([init.signal, timeout]) : timeout,
        })
    }
}

/** node-fetch 2 (2021-23 plugin server) honours the plugin's `timeout`: cut to the campaign's scale. */
function nodeFetchClient(timeoutMs: number): FetchFn {
    return (input, init: FetchInit = {}) =>
        hostNodeFetch(input, { ...init, timeout: Math.min(init.timeout ?? timeoutMs, timeoutMs) })
}

export interface AuditedFetch {
    fetch: FetchFn
    /** Every URL asked for that is not https on one of Intercom's three hosts (all refused). */
    offHost: string[]
    requests: number
    /** Requests the client gave up on (timeout), and requests that failed without an answer. */
    timeouts: number
    networkErrors: number
}

/** undici rejects with a TimeoutError (or AbortError), node-fetch with a FetchError of type request-timeout. */
function isTimeoutError(error: unknown): boolean {
    if (typeof error !== 'object' || error === null) return false
    const { name, type } = error as { name?: unknown; type?: unknown }
    return name === 'TimeoutError' || name === 'AbortError' || type === 'request-timeout'
}

/** Records the host of every request, refuses all but Intercom's, and sends those to the emulator. */
export function auditedFetch(emulatorUrl: string, client: ClientName, timeoutMs: number): AuditedFetch {
    const underlying = client === 'node-fetch' ? nodeFetchClient(timeoutMs) : undiciClient(timeoutMs)
    const redirect = redirectingFetch(emulatorUrl, underlying)
    const audit: AuditedFetch = {
        offHost: [],
        requests: 0,
        timeouts: 0,
        networkErrors: 0,
        fetch: async (input, init) => {
            audit.requests++
            const url = new URL(String(input))
            if (!isIntercomHost(url.hostname) || url.protocol !== 'https:') audit.offHost.push(url.origin)
            try {
                return await redirect(input, init)
            } catch (error) {
                if (isTimeoutError(error)) audit.timeouts++
                else audit.networkErrors++
                throw error
            }
        },
    }
    return audit
}

// ---------------------------------------------------------------------------------------------------
// Leak audit
// ---------------------------------------------------------------------------------------------------

export type SecretKind = 'token' | 'email' | 'property value'

const SECRETS: Record<SecretKind, string> = {
    token: CANARY_TOKEN,
    email: EMAIL_MARK,
    'property value': VALUE_MARK,
}

/**
 * One line per text that holds the token, an email or a property value. Logs may hold none of them; the
 * cache may hold property values (queued metadata, by design) but neither the token nor an email.
 */
export function findLeaks(
    texts: Iterable<string>,
    kinds: readonly SecretKind[] = ['token', 'email', 'property value']
): string[] {
    const leaks: string[] = []
    for (const text of texts) {
        const found: string[] = kinds.filter((kind) => text.includes(SECRETS[kind]))
        if (kinds.includes('email') && EMAIL_SHAPE.test(text)) found.push('email-shaped text')
        if (found.length > 0) leaks.push(`${found.join(', ')}: ${text.slice(0, 200)}`)
    }
    return leaks
}

// ---------------------------------------------------------------------------------------------------
// One scenario in one runtime
// ---------------------------------------------------------------------------------------------------

export interface RunOptions {
    /** Events per scenario. */
    events: number
    /**
     * Forces one HTTP client for every runtime (default: each runtime's own). `undici` does not go through
     * Node's http module, so a test file that leaves nock's patch of it behind cannot break the campaign.
     */
    client?: ClientName
    /** Emulator fault seed. */
    seed?: number
    /** Another plugin file than index.ts: the audit's self-test runs deliberately leaky mutants. */
    pluginFile?: string
}

export interface ScenarioResult {
    scenario: string
    runtime: RuntimeName
    workers: number
    sent: number
    /** Events that should reach Intercom (the others must be skipped). */
    valid: number
    /** Valid events stored exactly once. */
    deliveredOnce: number
    /** Valid events stored more than once (on two contacts): never acceptable. */
    duplicatesStored: number
    /** Stored events that match no valid event sent. */
    unexpectedStored: number
    /** Valid events stored on another contact than the user that has the email. */
    misdirected: number
    /** POSTs Intercom deduplicated (received > 1): retries of events already stored. */
    dedupedReceipts: number
    /** Valid events not delivered but reported with a reason (failed, dropped from the queue). */
    reported: number
    /** Reported as failed although Intercom stored them (e.g. a timeout after the write). */
    reportedButStored: number
    queuedNotDrained: number
    lost: number
    lostUuids: string[]
    /** Invalid events not skipped with their reason. */
    skipMismatches: string[]
    /** Failures reported without a reason. */
    unreasoned: string[]
    reasons: Record<string, number>
    /** RetryError retries by PostHog plus retry-queue retries. */
    retries: number
    maxPostsPerEvent: number
    maxPostsAllowed: number
    /** POSTs of an event after Intercom refused it for good (401/422). */
    retriedAfterPermanent: number
    calls: number
    searches: number
    emails: number
    /** POST /contacts that created a contact. */
    contactsCreated: number
    /** Emails with more than one contact of the same role after the run: a create race lost. */
    duplicateContacts: number
    rateLimited: number
    /** Calls that arrived after the first 429 of their rate-limit window (in flight, or not backing off). */
    callsAfter429: number
    /** Upper bound of callsAfter429: every worker's requests in flight, per window with a 429. */
    callsAfter429Allowed: number
    invalidRequests: number
    /** How often each fault happened: emulator statuses, client timeouts, contacts created. */
    faultCounts: Record<FaultKind, number>
    /** Log lines captured (and audited) for this run. */
    logLines: number
    /** Longest time without a request reaching Intercom (a rate-limit wait shows here). */
    longestPauseMs: number
    drainRounds: number
    drained: boolean
    offHost: string[]
    leaks: string[]
    durationMs: number
}

interface RunState {
    emulator: Emulator
    harness: Harness
    audit: AuditedFetch
    logs: LogLine[]
    drain: DrainResult
}

/** Seeds users (and, for some emails, an older lead first: the plugin must still pick the user). */
function seedContacts(emulator: Emulator, workload: Workload): Map<string, string> {
    const users = new Map<string, string>()
    for (const email of workload.emails) {
        if (workload.emailsWithLead.includes(email)) emulator.addContact({ email, role: 'lead' })
        users.set(email, emulator.addContact({ email, role: 'user' }).id)
    }
    return users
}

/** Applies each mid-run change once the emulator has seen share × events requests. */
function scheduleMidRun(emulator: Emulator, scenario: FaultScenario, events: number): () => void {
    const changes = (scenario.midRun ?? []).map((change) => ({
        threshold: Math.max(1, Math.round(change.share * events)),
        patch: change.patch,
    }))
    let seen = 0
    return emulator.onRequest(() => {
        seen++
        for (const change of changes) if (seen === change.threshold) emulator.configure(change.patch)
    })
}

async function sendInWaves(harness: Harness, events: PlannedEvent[], waves: number): Promise<void> {
    const size = Math.ceil(events.length / waves)
    for (let start = 0; start < events.length; start += size) {
        await harness.run(events.slice(start, start + size).map((planned) => planned.event))
    }
}

/** What one run is: the scenario, the runtime, the events, and who should receive them. */
interface RunPlan {
    scenario: FaultScenario
    runtime: Runtime
    options: RunOptions
    workload: Workload
}

type StartedRun = Omit<RunState, 'drain'> & {
    /** Email → id of the seeded user the email's events must land on. */
    users: Map<string, string>
}

/** The emulator (seeded), the audited client and the harness of one run; faults come later. */
async function startRun({ scenario, runtime, options, workload }: RunPlan): Promise<StartedRun> {
    const emulator = await startEmulator({ tokens: [CANARY_TOKEN], seed: options.seed ?? 1 })
    const users =
        scenario.contacts === 'seeded' ? seedContacts(emulator, workload) : new Map<string, string>()
    const audit = auditedFetch(emulator.url, options.client ?? runtime.client, CLIENT_TIMEOUT_MS)
    const logs: LogLine[] = []
    const harness = await createHarness({
        mode: runtime.mode,
        retries: runtime.retries,
        pluginFile: options.pluginFile,
        config: campaignConfig(scenario),
        fetch: audit.fetch,
        workers: scenario.workers,
        concurrency: CONCURRENCY,
        minuteMs: MINUTE_MS,
        delayScale: DELAY_SCALE,
        maxLogLines: 100,
        onLog: (line) => logs.push(line),
    }).catch(async (error: unknown) => {
        await emulator.close()
        throw error
    })
    return { emulator, harness, audit, logs, users }
}

/** Runs one scenario in one runtime to its end and accounts for every event. */
export async function runScenario(
    scenario: FaultScenario,
    runtime: Runtime,
    options: RunOptions
): Promise<ScenarioResult> {
    const started = Date.now()
    const plan: RunPlan = {
        scenario,
        runtime,
        options,
        workload: buildWorkload(scenario, options.events, started),
    }
    const { workload } = plan
    const { emulator, harness, audit, logs, users } = await startRun(plan)
    try {
        // Faults start after setupPlugin, whose GET /me is not what is being tested.
        emulator.configure(scenario.faults)
        const stopMidRun = scheduleMidRun(emulator, scenario, workload.events.length)
        await sendInWaves(harness, workload.events, scenario.waves)
        if (scenario.recover) emulator.configure(scenario.recover)
        const drain = await harness.drain({ maxRounds: MAX_DRAIN_ROUNDS, intervalMs: MINUTE_MS })
        stopMidRun()
        const state: RunState = { emulator, harness, audit, logs, drain }
        return { ...account(plan, users, state), durationMs: Date.now() - started }
    } finally {
        await harness.close()
        await emulator.close()
    }
}

// ---------------------------------------------------------------------------------------------------
// Accounting: what Intercom holds against what was sent and what was reported
// ---------------------------------------------------------------------------------------------------

const dedupKey = (email: string, name: string, createdAt: number) => `${email}|${name}|${createdAt}`

/** Stored events by dedup key, the contact resolved to its email. */
function storedByKey(events: StoredEvent[], contacts: StoredContact[]): Map<string, StoredEvent[]> {
    const emailOf = new Map(contacts.map((c) => [c.id, (c.email ?? '').toLowerCase()]))
    const byKey = new Map<string, StoredEvent[]>()
    for (const event of events) {
        const key = dedupKey(emailOf.get(event.contact_id) ?? '?', event.event_name, event.created_at)
        byKey.set(key, [...(byKey.get(key) ?? []), event])
    }
    return byKey
}

const DROPPED = /^Dropped queued event (\S+): (.+)$/
const UNATTRIBUTED_DROP = /^Retry queue is full or unavailable: dropped (\d+) events/

/** "Dropped queued event <uuid>: <reason>" lines: the retry queue's reports, by uuid. */
function droppedFromQueue(logs: LogLine[]): { byUuid: Map<string, string>; unattributed: number } {
    const byUuid = new Map<string, string>()
    let unattributed = 0
    for (const { text } of logs) {
        const dropped = DROPPED.exec(text)
        // An item the plugin could not read names no uuid: it is reported, but not attributable.
        if (dropped && dropped[1] === '(unreadable)') unattributed++
        else if (dropped) byUuid.set(dropped[1], dropped[2])
        const bulk = UNATTRIBUTED_DROP.exec(text)
        if (bulk) unattributed += Number(bulk[1])
    }
    return { byUuid, unattributed }
}

/** A reason without ids, times and numbers that vary, so that reasons can be counted. */
export function reasonClass(reason: string): string {
    return reason
        .replace(/[0-9a-f]{8}-[0-9a-f-]{27}/gi, '<uuid>')
        .replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, '<time>')
        .replace(/\b[0-9a-f]{24}\b/g, '<id>')
        .replace(/"evt_\d"|"renamed_evt_0"/g, '"<name>"')
        .replace(/\d+/g, 'N')
        .slice(0, 240)
}

interface Reports {
    /** uuid → reason, for every event reported as not (or not surely) delivered. */
    byUuid: Map<string, string>
    unattributed: number
    unreasoned: string[]
}

function collectReports(records: readonly EventRecord[], logs: LogLine[]): Reports {
    const { byUuid, unattributed } = droppedFromQueue(logs)
    const unreasoned: string[] = []
    for (const record of records) {
        if (record.status !== 'failed' && record.status !== 'skipped') continue
        if (!record.reason?.trim()) unreasoned.push(record.uuid)
        byUuid.set(record.uuid, record.reason ?? '')
    }
    for (const [uuid, reason] of byUuid) if (!reason.trim()) unreasoned.push(uuid)
    return { byUuid, unattributed, unreasoned }
}

interface PostTally {
    maxPerEvent: number
    afterPermanent: number
}

/** POST /events per event (contact id + name + created_at), and any made after a 401/422 for it. */
function tallyPosts(requests: RecordedRequest[]): PostTally {
    const posts = new Map<string, number>()
    const refused = new Set<string>()
    let afterPermanent = 0
    for (const request of requests) {
        if (request.method !== 'POST' || request.path !== '/events') continue
        const body = (request.body ?? {}) as Record<string, unknown>
        const key = `${String(body.id)}|${String(body.event_name)}|${String(body.created_at)}`
        if (refused.has(key)) afterPermanent++
        posts.set(key, (posts.get(key) ?? 0) + 1)
        if (request.status === 401 || request.status === 422) refused.add(key)
    }
    return { maxPerEvent: Math.max(0, ...posts.values()), afterPermanent }
}

/** Calls that reached Intercom after the first 429 of their window, and how many windows had one. */
function backoffTally(requests: RecordedRequest[], windowMs: number): { after: number; windows: number } {
    const first429 = new Map<number, number>()
    for (const r of requests) {
        const window = Math.floor(r.at / windowMs)
        const known = first429.get(window)
        if (r.status === 429 && (known === undefined || r.at < known)) first429.set(window, r.at)
    }
    const after = requests.filter((r) => r.at > (first429.get(Math.floor(r.at / windowMs)) ?? Infinity))
    return { after: after.length, windows: first429.size }
}

function faultCounts(
    byStatus: Record<string, number>,
    audit: AuditedFetch,
    created: number
): Record<FaultKind, number> {
    const status = (code: string) => byStatus[code] ?? 0
    return {
        '5xx': status('500') + status('502') + status('503'),
        '429': status('429'),
        timeout: audit.timeouts,
        dropped: status('dropped'),
        created,
        '401': status('401'),
        '422': status('422'),
        none: 0,
    }
}

function longestPause(requests: RecordedRequest[]): number {
    const times = requests.map((request) => request.at).sort((a, b) => a - b)
    let longest = 0
    for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i] - times[i - 1])
    return longest
}

function duplicateContacts(contacts: StoredContact[]): number {
    const seen = new Map<string, number>()
    for (const contact of contacts) {
        const key = `${contact.role} ${(contact.email ?? '').toLowerCase()}`
        seen.set(key, (seen.get(key) ?? 0) + 1)
    }
    return [...seen.values()].filter((count) => count > 1).length
}

function maxPostsAllowed(runtime: Runtime): number {
    // cdp: one try (and its immediate network retry); plugin server: the retry queue's tries.
    return runtime.mode === 'cdp' ? CALLS_PER_TRY : QUEUE_MAX_ATTEMPTS * CALLS_PER_TRY
}

interface Delivery {
    deliveredOnce: number
    duplicatesStored: number
    misdirected: number
    reportedButStored: number
    reported: number
    lostUuids: string[]
    reasons: Record<string, number>
}

/** Where each valid event ended: stored once, twice, on the wrong contact, reported, or nowhere. */
function checkValidEvents(
    valid: PlannedEvent[],
    stored: Map<string, StoredEvent[]>,
    context: { users: Map<string, string>; reports: Reports }
): Delivery {
    const { users, reports } = context
    const result: Delivery = {
        deliveredOnce: 0,
        duplicatesStored: 0,
        misdirected: 0,
        reportedButStored: 0,
        reported: 0,
        lostUuids: [],
        reasons: {},
    }
    for (const planned of valid) {
        const matches = stored.get(dedupKey(planned.email!, planned.name!, planned.createdAt!)) ?? []
        const reason = reports.byUuid.get(planned.event.uuid)
        if (reason !== undefined) {
            const kind = reasonClass(reason)
            result.reasons[kind] = (result.reasons[kind] ?? 0) + 1
        }
        if (matches.length === 1) result.deliveredOnce++
        if (matches.length > 1) result.duplicatesStored++
        const user = users.get(planned.email!)
        if (user && matches.some((event) => event.contact_id !== user)) result.misdirected++
        if (matches.length > 0 && reason !== undefined) result.reportedButStored++
        if (matches.length === 0 && reason !== undefined) result.reported++
        if (matches.length === 0 && reason === undefined) result.lostUuids.push(planned.event.uuid)
    }
    return result
}

function checkSkippedEvents(invalid: PlannedEvent[], records: readonly EventRecord[]): string[] {
    const byUuid = new Map(records.map((record) => [record.uuid, record]))
    return invalid
        .filter((planned) => {
            const record = byUuid.get(planned.event.uuid)
            const expected = EXPECTED_SKIP[planned.kind as keyof typeof EXPECTED_SKIP]
            return record?.status !== 'skipped' || record.reason !== expected
        })
        .map((planned) => planned.event.uuid)
}

function logTexts(state: RunState, summary: HarnessSummary): string[] {
    return [
        ...state.logs.map((line) => line.text),
        ...state.harness.records().map((record) => record.reason ?? ''),
        ...summary.setupFailures,
        ...Object.keys(summary.failed),
        ...Object.keys(summary.minute.failed),
    ]
}

function account(
    { scenario, runtime, workload }: RunPlan,
    users: Map<string, string>,
    state: RunState
): Omit<ScenarioResult, 'durationMs'> {
    const { emulator, harness, drain } = state
    const summary = harness.summary()
    const records = harness.records()
    const requests = emulator.requests()
    const stats = emulator.stats()
    const valid = workload.events.filter((planned) => planned.kind === 'valid')
    const stored = storedByKey(emulator.events(), emulator.contacts())
    const reports = collectReports(records, state.logs)
    const delivery = checkValidEvents(valid, stored, { users, reports })
    const validKeys = new Set(valid.map((p) => dedupKey(p.email!, p.name!, p.createdAt!)))
    const posts = tallyPosts(requests)
    const backoff = backoffTally(requests, emulator.options.windowSeconds * 1000)
    const queuedNotDrained = drain.remaining
    return {
        scenario: scenario.name,
        runtime: runtime.name,
        workers: scenario.workers,
        sent: workload.events.length,
        valid: valid.length,
        ...delivery,
        unexpectedStored: [...stored.keys()].filter((key) => !validKeys.has(key)).length,
        dedupedReceipts: emulator.events().reduce((sum, event) => sum + event.received - 1, 0),
        queuedNotDrained,
        // Items still queued or dropped in bulk are reported, but not by uuid.
        lost: Math.max(0, delivery.lostUuids.length - queuedNotDrained - reports.unattributed),
        skipMismatches: checkSkippedEvents(
            workload.events.filter((planned) => planned.kind !== 'valid'),
            records
        ),
        unreasoned: reports.unreasoned,
        retries: summary.retried + summary.minute.retried,
        maxPostsPerEvent: posts.maxPerEvent,
        maxPostsAllowed: maxPostsAllowed(runtime),
        retriedAfterPermanent: posts.afterPermanent,
        calls: stats.calls,
        searches: stats.searches,
        emails: workload.emails.length,
        contactsCreated: stats.contactsCreated,
        duplicateContacts: duplicateContacts(emulator.contacts()),
        rateLimited: stats.rateLimited,
        callsAfter429: backoff.after,
        callsAfter429Allowed: backoff.windows * scenario.workers * CONCURRENCY,
        invalidRequests: stats.byStatus['400'] ?? 0,
        faultCounts: faultCounts(stats.byStatus, state.audit, stats.contactsCreated),
        longestPauseMs: longestPause(requests),
        logLines: state.logs.length,
        drainRounds: drain.rounds,
        drained: drain.empty,
        offHost: state.audit.offHost,
        leaks: findLeaks(logTexts(state, summary)),
    }
}

// ---------------------------------------------------------------------------------------------------
// Bad input: the sandboxed plugin against a recording fake of Intercom
// ---------------------------------------------------------------------------------------------------

export interface IntercomCall {
    url: string
    method: string
    path: string
    violations: string[]
    offHost: boolean
}

export interface FakeIntercomOptions {
    workspaceRegion?: 'US' | 'Europe' | 'AU'
    rejectToken?: boolean
    /** Status of POST /events (default 202), e.g. 503 to fill the retry queue. */
    eventStatus?: number
}

export interface FakeIntercom {
    fetch: FetchFn
    calls: IntercomCall[]
}

/**
 * The Intercom model in the process, open world (every searched email is a user) and any token accepted:
 * records every request with the rules it breaks, and refuses hosts other than Intercom's.
 */
export function fakeIntercom(options: FakeIntercomOptions = {}): FakeIntercom {
    const intercom = createIntercom({ ...STAND_IN_OPTIONS, tokens: options.rejectToken ? [] : ['*'] })
    const calls: IntercomCall[] = []
    const fake = async (input: string | URL, init: FetchInit = {}): Promise<FetchResponse> => {
        const url = new URL(String(input))
        const method = (init.method ?? 'GET').toUpperCase()
        const offHost = !isIntercomHost(url.hostname) || url.protocol !== 'https:'
        const violations = requestViolations(method, url.pathname, toHeaderRecord(init.headers), init.body)
        calls.push({ url: url.origin + url.pathname, method, path: url.pathname, violations, offHost })
        if (offHost) throw new Error(`refused: ${url.hostname} is not an Intercom host`)
        const region = options.workspaceRegion ?? regionNameOf(url.hostname)
        intercom.configure({ region: region as FakeIntercomOptions['workspaceRegion'] })
        if (
            options.eventStatus &&
            options.eventStatus !== 202 &&
            `${method} ${url.pathname}` === 'POST /events'
        ) {
            const errors = [{ code: 'service_unavailable', message: 'unavailable' }]
            return Response.json({ type: 'error.list', errors }, { status: options.eventStatus })
        }
        return intercom.fetch(url, init)
    }
    return { fetch: fake, calls }
}

/** One plugin instance as PostHog runs it: its sandbox, meta, fake Intercom and captured log. */
export interface SandboxPlugin {
    runtime: SandboxRuntime
    plugin: PluginExports
    meta: PluginMeta
    intercom: FakeIntercom
    logs: string[]
    /** plugin-server: the cache's backing store, to audit what the plugin keeps there. */
    store?: CacheStore
    storeWrites: string[]
    setupError?: string
}

function capture(logs: string[]): ConsoleLike & { log(...args: unknown[]): void } {
    const write = (...args: unknown[]) => logs.push(args.map(String).join(' '))
    return { log: write, info: write, warn: write, error: write, debug: write }
}

/** A store that remembers every key and value written, for the cache audit. */
function recordingStore(writes: string[]): CacheStore {
    const store = createMemoryStore()
    return {
        ...store,
        set: (key, value, ttl) => (writes.push(key, value), store.set(key, value, ttl)),
        lpush: (key, values) => (writes.push(key, ...values), store.lpush(key, values)),
    }
}

/** The meta each runtime hands the plugin (see harness.ts for the full account of both). */
function sandboxMeta(
    runtime: SandboxRuntime,
    config: Record<string, string>,
    instance: SandboxPlugin
): PluginMeta {
    if (runtime === 'cdp') {
        const logger = capture(instance.logs)
        return {
            config: { ...config },
            global: {},
            logger: { debug: logger.debug, log: logger.log, warn: logger.warn, error: logger.error },
            geoip: { locate: () => null },
            fetch: cdpFetch(instance.intercom.fetch),
        }
    }
    instance.store = recordingStore(instance.storeWrites)
    return {
        config: { ...config },
        global: {},
        attachments: {},
        cache: createPluginCache(instance.store, 'bad-input/'),
        storage: createMemoryStorage(),
        geoip: { locate: async () => null },
        jobs: {},
        metrics: {},
    }
}

/** Loads index.ts in a fresh sandbox and runs setupPlugin; a setup failure is kept, not thrown. */
export async function startSandboxPlugin(
    runtime: SandboxRuntime,
    config: Record<string, string>,
    intercomOptions: FakeIntercomOptions = {}
): Promise<SandboxPlugin> {
    const intercom = fakeIntercom(intercomOptions)
    const logs: string[] = []
    const plugin = loadPlugin({ fetch: intercom.fetch, console: capture(logs) })
    const instance: SandboxPlugin = { runtime, plugin, meta: {}, intercom, logs, storeWrites: [] }
    instance.meta = sandboxMeta(runtime, config, instance)
    try {
        await plugin.setupPlugin?.(instance.meta)
    } catch (error) {
        instance.setupError = describeError(error)
    }
    return instance
}

export interface BadInputResult {
    name: string
    runtime: SandboxRuntime
    status: string
    reason?: string
    /** A thrown error: with a valid fake Intercom, any throw from onEvent is a crash. */
    crash?: string
    violations: string[]
    requests: number
    offHost: string[]
    /** Why the result does not meet the case's expectation; empty when it does. */
    problems: string[]
}

function readOutcome(value: unknown): { status: string; reason?: string } {
    const outcome = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>
    return {
        status: typeof outcome.status === 'string' ? outcome.status : 'none',
        reason: typeof outcome.reason === 'string' ? outcome.reason : undefined,
    }
}

/** What is wrong with an outcome, given what the case expects. */
function outcomeProblems(c: BadEventCase, status: string, reason: string | undefined): string[] {
    const problems: string[] = []
    if (!['delivered', 'skipped', 'synced'].includes(status)) problems.push(`status ${status}`)
    if (status === 'skipped' && !(SKIP_REASONS as readonly string[]).includes(reason ?? '')) {
        problems.push(`skipped without a documented reason (${reason ?? 'none'})`)
    }
    if (c.expect.status === 'delivered' && status !== 'delivered')
        problems.push(`expected delivered, got ${status} (${reason})`)
    if (c.expect.status === 'skipped' && (status !== 'skipped' || reason !== c.expect.reason)) {
        problems.push(`expected skipped "${c.expect.reason}", got ${status} (${reason ?? 'no reason'})`)
    }
    return problems
}

/** The event as the runtime hands it over: the cdp executor adds `person` to the event. */
function eventFor(runtime: SandboxRuntime, c: BadEventCase): Record<string, unknown> {
    if (runtime !== 'cdp' || !c.person) return c.event
    return { ...c.event, person: { uuid: 'p-1', team_id: 1, properties: c.person, created_at: '' } }
}

/** One event through an already set-up plugin. */
export async function runBadEvent(instance: SandboxPlugin, c: BadEventCase): Promise<BadInputResult> {
    const before = instance.intercom.calls.length
    let status = 'thrown'
    let reason: string | undefined
    let crash: string | undefined
    try {
        ;({ status, reason } = readOutcome(
            await instance.plugin.onEvent?.(eventFor(instance.runtime, c), instance.meta)
        ))
    } catch (error) {
        crash = describeError(error)
    }
    const calls = instance.intercom.calls.slice(before)
    const violations = calls.flatMap((call) => call.violations)
    const problems = [
        ...(crash ? [`crashed: ${crash}`] : outcomeProblems(c, status, reason)),
        ...violations.map((v) => `invalid request: ${v}`),
        ...calls.filter((call) => call.offHost).map((call) => `request off Intercom: ${call.url}`),
    ]
    return {
        name: c.name,
        runtime: instance.runtime,
        status,
        reason,
        crash,
        violations,
        requests: calls.length,
        offHost: calls.filter((call) => call.offHost).map((call) => call.url),
        problems,
    }
}

/** Set-up plugins by runtime and config, so that a corpus reuses instances as PostHog does. */
export class SandboxPool {
    private readonly instances = new Map<string, Promise<SandboxPlugin>>()

    get(runtime: SandboxRuntime, config: Record<string, string>): Promise<SandboxPlugin> {
        const key = `${runtime} ${JSON.stringify(config)}`
        let instance = this.instances.get(key)
        if (!instance) {
            instance = startSandboxPlugin(runtime, config)
            this.instances.set(key, instance)
        }
        return instance
    }

    async all(): Promise<SandboxPlugin[]> {
        return Promise.all(this.instances.values())
    }
}

export function caseConfig(c: BadEventCase): Record<string, string> {
    return { ...CORPUS_CONFIG, ...c.config }
}

export interface ConfigResult {
    name: string
    runtime: SandboxRuntime
    setupError?: string
    hosts: string[]
    offHost: string[]
    problems: string[]
    /** Every text the plugin produced: log lines and the setup error. */
    texts: string[]
}

/** A setup error matching the case's pattern, or a working plugin that called only the expected host. */
function configProblems(c: BadConfigCase, setupError: string | undefined, hosts: string[]): string[] {
    if ('host' in c.expect) {
        if (setupError) return [`unexpected setup error: ${setupError}`]
        return hosts.join() === c.expect.host
            ? []
            : [`expected only ${c.expect.host}, called ${hosts.join(', ')}`]
    }
    if (!setupError) return ['expected a setup error, setup succeeded']
    // ConfigError keeps Error's name: anything else (TypeError…) is a crash, not a message for the user.
    if (!/^Error: /.test(setupError)) return [`not a ConfigError: ${setupError}`]
    return c.expect.setupError.test(setupError) ? [] : [`unexpected setup error: ${setupError}`]
}

/** setupPlugin with a bad (or odd) config, then one good event when setup succeeded. */
export async function runBadConfig(runtime: SandboxRuntime, c: BadConfigCase): Promise<ConfigResult> {
    const instance = await startSandboxPlugin(runtime, c.config, {
        workspaceRegion: c.workspaceRegion,
        rejectToken: c.rejectToken,
    })
    const { setupError, intercom } = instance
    const eventProblems = setupError
        ? []
        : (await runBadEvent(instance, { name: c.name, event: corpusEvent(), expect: { status: 'any' } }))
              .problems
    const hosts = [...new Set(intercom.calls.map((call) => new URL(call.url).hostname))]
    const offHost = intercom.calls.filter((call) => call.offHost).map((call) => call.url)
    return {
        name: c.name,
        runtime,
        setupError,
        hosts,
        offHost,
        problems: [...configProblems(c, setupError, hosts), ...eventProblems],
        texts: [...instance.logs, ...(setupError ? [setupError] : [])],
    }
}

export interface BadInputReport {
    eventCases: number
    configCases: number
    /** Runs: cases × runtimes. */
    runs: number
    crashes: number
    invalidRequests: number
    offHostRequests: number
    /** Results that miss their expectation (crashes, invalid requests and wrong reasons included). */
    failures: { name: string; runtime: string; problems: string[] }[]
    knownBugHits: Record<string, number>
    leaks: string[]
    /** Keys and values the plugin wrote to the cache that hold an email, the token or a value. */
    cacheLeaks: string[]
    events: BadInputResult[]
    configs: ConfigResult[]
}

/** Known bugs a result hits: by its violations, or by the case's own mark. */
function knownBugIds(c: BadEventCase, result: BadInputResult): string[] {
    const ids = new Set(result.violations.map((v) => knownBugOf(v)?.id).filter((id): id is string => !!id))
    if (c.knownBug && result.problems.length > 0) ids.add(c.knownBug)
    return [...ids]
}

/** Fails unless every problem of the result comes from a known bug. */
function unexplainedProblems(c: BadEventCase, result: BadInputResult): string[] {
    if (c.knownBug) return []
    return result.problems.filter((problem) => !knownBugOf(problem.replace(/^invalid request: /, '')))
}

export async function runBadInputs(options: { seed: number; generated: number }): Promise<BadInputReport> {
    const cases = [...BAD_EVENT_CASES, ...generatedEventCases(options.seed, options.generated)]
    const pool = new SandboxPool()
    const events: BadInputResult[] = []
    const failures: BadInputReport['failures'] = []
    const knownBugHits: Record<string, number> = {}
    for (const runtime of SANDBOX_RUNTIMES) {
        for (const c of cases.filter((c) => !c.runtimes || c.runtimes.includes(runtime))) {
            const result = await runBadEvent(await pool.get(runtime, caseConfig(c)), c)
            events.push(result)
            for (const id of knownBugIds(c, result)) knownBugHits[id] = (knownBugHits[id] ?? 0) + 1
            const problems = unexplainedProblems(c, result)
            if (problems.length > 0) failures.push({ name: c.name, runtime, problems })
        }
    }
    const configs: ConfigResult[] = []
    for (const runtime of SANDBOX_RUNTIMES) {
        for (const c of BAD_CONFIG_CASES) configs.push(await runBadConfig(runtime, c))
    }
    for (const config of configs) {
        if (config.problems.length > 0)
            failures.push({ name: config.name, runtime: config.runtime, problems: config.problems })
    }
    const instances = await pool.all()
    return {
        eventCases: cases.length,
        configCases: BAD_CONFIG_CASES.length,
        runs: events.length + configs.length,
        crashes: events.filter((result) => result.crash).length,
        invalidRequests: events.reduce((sum, result) => sum + result.violations.length, 0),
        offHostRequests: [...events, ...configs].reduce((sum, result) => sum + result.offHost.length, 0),
        failures,
        knownBugHits,
        leaks: findLeaks([
            ...instances.flatMap((instance) => instance.logs),
            ...events.map((result) => `${result.reason ?? ''} ${result.crash ?? ''}`),
            ...configs.flatMap((config) => config.texts),
        ]),
        cacheLeaks: findLeaks(
            instances.flatMap((instance) => instance.storeWrites),
            ['token', 'email']
        ),
        events,
        configs,
    }
}

// ---------------------------------------------------------------------------------------------------
// The campaign and its report
// ---------------------------------------------------------------------------------------------------

export interface CampaignOptions extends RunOptions {
    scenarios?: readonly FaultScenario[]
    runtimes?: readonly Runtime[]
    /** Generated bad events on top of the hand-written corpus. */
    generated?: number
    onResult?: (result: ScenarioResult) => void
}

export interface CampaignReport {
    generatedAt: string
    options: { events: number; client: ClientName | 'per runtime'; seed: number; generated: number }
    scenarios: ScenarioResult[]
    badInputs: Omit<BadInputReport, 'events' | 'configs'>
    totals: {
        runs: number
        sent: number
        lost: number
        duplicatesStored: number
        leaks: number
        offHost: number
    }
}

/** The report without per-case details, which would bury the figures in the JSON. */
function summaryOf(report: BadInputReport): CampaignReport['badInputs'] {
    const summary: Partial<BadInputReport> = { ...report }
    delete summary.events
    delete summary.configs
    return summary as CampaignReport['badInputs']
}

export async function runCampaign(options: CampaignOptions): Promise<CampaignReport> {
    const seed = options.seed ?? 1
    const generated = options.generated ?? 200
    const scenarios: ScenarioResult[] = []
    for (const scenario of options.scenarios ?? SCENARIOS) {
        for (const runtime of options.runtimes ?? RUNTIMES) {
            const result = await runScenario(scenario, runtime, { ...options, seed })
            scenarios.push(result)
            options.onResult?.(result)
        }
    }
    const badInputs = summaryOf(await runBadInputs({ seed, generated }))
    const sum = (pick: (r: ScenarioResult) => number) => scenarios.reduce((total, r) => total + pick(r), 0)
    return {
        generatedAt: new Date().toISOString(),
        options: { events: options.events, client: options.client ?? 'per runtime', seed, generated },
        scenarios,
        badInputs,
        totals: {
            runs: scenarios.length,
            sent: sum((r) => r.sent),
            lost: sum((r) => r.lost),
            duplicatesStored: sum((r) => r.duplicatesStored + r.unexpectedStored),
            leaks: sum((r) => r.leaks.length) + badInputs.leaks.length + badInputs.cacheLeaks.length,
            offHost: sum((r) => r.offHost.length) + badInputs.offHostRequests,
        },
    }
}

const COLUMNS: ReadonlyArray<[string, (r: ScenarioResult) => string | number]> = [
    ['scenario', (r) => r.scenario],
    ['runtime', (r) => r.runtime],
    ['sent', (r) => r.sent],
    ['valid', (r) => r.valid],
    ['delivered once', (r) => r.deliveredOnce],
    ['dup stored', (r) => r.duplicatesStored + r.unexpectedStored],
    ['deduped', (r) => r.dedupedReceipts],
    ['reported', (r) => r.reported],
    ['lost', (r) => r.lost],
    ['retries', (r) => r.retries],
    ['max POST/event', (r) => `${r.maxPostsPerEvent}/${r.maxPostsAllowed}`],
    ['searches/emails', (r) => `${r.searches}/${r.emails}`],
    ['429s', (r) => r.rateLimited],
    ['after 429', (r) => r.callsAfter429],
    ['max pause s', (r) => (r.longestPauseMs / 1000).toFixed(1)],
    ['drained', (r) => (r.drained ? `yes (${r.drainRounds})` : 'NO')],
    ['leaks', (r) => r.leaks.length],
    ['s', (r) => (r.durationMs / 1000).toFixed(1)],
]

/** One row per scenario run, right-aligned figures. */
function formatTable(results: readonly ScenarioResult[]): string {
    const columns = COLUMNS.map(([header], i) => ({ header, align: i < 2 ? 'left' : 'right' }) as const)
    return formatColumns(
        columns,
        results.map((r) => COLUMNS.map(([, cell]) => String(cell(r))))
    ).join('\n')
}

export function formatReport(report: CampaignReport): string {
    const bad = report.badInputs
    const reasons = new Map<string, number>()
    for (const r of report.scenarios) {
        for (const [reason, count] of Object.entries(r.reasons))
            reasons.set(reason, (reasons.get(reason) ?? 0) + count)
    }
    return [
        formatTable(report.scenarios),
        '',
        `Scenarios run: ${report.totals.runs} (${report.totals.sent} events) · lost: ${report.totals.lost} · duplicates stored: ${report.totals.duplicatesStored} · leaks: ${report.totals.leaks} · requests off Intercom: ${report.totals.offHost}`,
        `Bad inputs tried: ${bad.eventCases} events + ${bad.configCases} configs, in 2 runtimes = ${bad.runs} runs · crashes: ${bad.crashes} · invalid requests: ${bad.invalidRequests} · unexplained failures: ${bad.failures.length} · leaks: ${bad.leaks.length} · cache leaks: ${bad.cacheLeaks.length}`,
        `Known plugin bugs hit: ${
            Object.entries(bad.knownBugHits)
                .map(([id, n]) => `${id} ×${n}`)
                .join(', ') || 'none'
        }`,
        '',
        'Reasons reported for undelivered events:',
        ...[...reasons.entries()]
            .sort((a, b) => b[1] - a[1])
            .map(([reason, n]) => `  ${String(n).padStart(5)}  ${reason}`),
    ].join('\n')
}

export const FAULTS_USAGE = `Usage: npm run faults -- [options]
  --events N          events per harness scenario (default 200)
  --scenario NAME     run one scenario only: a harness scenario or a variant scenario
  --variants LIST     variant columns to run, e.g. 1,3,6 (default: all a scenario applies to)
  --small             variant scenarios at their reduced size (as inside npm test)
  --client NAME       harness HTTP client: undici or node-fetch (default: per runtime)
  --generated N       generated bad events on top of the corpus (default 300)
  --out FILE          JSON report (default faults-results.json)
  --help              this text

Harness scenarios: ${SCENARIOS.map((s) => s.name).join(', ')}
Variant scenarios (PostHog's six runtimes, a real Redis): ${VARIANT_SCENARIOS.map((s) => s.name).join(', ')}`

export interface CliArgs {
    help: boolean
    events: number
    out: string
    client?: ClientName
    scenario?: string
    variants: VariantId[]
    small: boolean
    generated: number
}

const VALUE_FLAGS = ['events', 'out', 'client', 'scenario', 'variants', 'generated']
const SWITCHES = ['help', 'small']

function parseVariants(text: string | undefined): VariantId[] {
    if (text === undefined) return [...VARIANT_IDS]
    const ids = text.split(',').map((part) => Number(part.trim()))
    const wrong = ids.find((id) => !isVariantId(id))
    if (wrong !== undefined) throw new Error(`--variants takes numbers 1 to 6, not '${text}'`)
    return ids as VariantId[]
}

/** Parses the command line; throws a clear message for an unknown flag, scenario or value. */
export function parseFaultsArgs(argv: readonly string[]): CliArgs {
    const values = new Map<string, string>()
    const switches = new Set<string>()
    for (let i = 0; i < argv.length; i++) {
        const name = argv[i].startsWith('--') ? argv[i].slice(2) : ''
        if (SWITCHES.includes(name)) switches.add(name)
        else if (VALUE_FLAGS.includes(name) && i + 1 < argv.length) values.set(name, argv[++i])
        else if (VALUE_FLAGS.includes(name)) throw new Error(`--${name} needs a value`)
        else throw new Error(`Unknown option '${argv[i]}'`)
    }
    const scenario = values.get('scenario')
    const known = [...SCENARIOS.map((s) => s.name), ...VARIANT_SCENARIOS.map((s) => s.name)]
    if (scenario !== undefined && !known.includes(scenario))
        throw new Error(`Unknown scenario '${scenario}'. Known: ${known.join(', ')}`)
    const client = values.get('client')
    if (client !== undefined && client !== 'undici' && client !== 'node-fetch')
        throw new Error(`--client is undici or node-fetch, not '${client}'`)
    return {
        help: switches.has('help'),
        events: numberFlag('events', values.get('events'), { integer: true, min: 0 }) ?? 200,
        out: values.get('out') ?? 'faults-results.json',
        client: client as ClientName | undefined,
        scenario,
        variants: parseVariants(values.get('variants')),
        small: switches.has('small'),
        generated: numberFlag('generated', values.get('generated'), { integer: true, min: 0 }) ?? 300,
    }
}

/** The variant matrix: each selected scenario in each selected variant it applies to. */
export async function runVariantCampaign(
    options: { scenario?: string; variants: readonly VariantId[]; small: boolean },
    onResult?: (result: VariantScenarioResult) => void
): Promise<VariantScenarioResult[]> {
    const results: VariantScenarioResult[] = []
    for (const scenario of VARIANT_SCENARIOS) {
        if (options.scenario && scenario.name !== options.scenario) continue
        if (options.small && scenario.smallEvents === 0) continue
        for (const variant of options.variants) {
            if (!scenario.variants.includes(variant)) continue
            const result = await runVariantScenario(scenario, variant, { small: options.small })
            results.push(result)
            onResult?.(result)
        }
    }
    return results
}

async function main(args: CliArgs): Promise<void> {
    const progress = (name: string, durationMs: number) =>
        process.stderr.write(`  ${name}: ${(durationMs / 1000).toFixed(1)} s\n`)
    const isVariantScenario = VARIANT_SCENARIOS.some((s) => s.name === args.scenario)
    const report = isVariantScenario
        ? undefined
        : await runCampaign({
              events: args.events,
              client: args.client,
              generated: args.generated,
              scenarios: SCENARIOS.filter((s) => !args.scenario || s.name === args.scenario),
              onResult: (r) => progress(`${r.scenario} / ${r.runtime}`, r.durationMs),
          })
    const harnessOnly = args.scenario !== undefined && !isVariantScenario
    const variants = harnessOnly
        ? []
        : await runVariantCampaign(args, (r) =>
              progress(`${r.scenario} / variant ${r.variant}`, r.durationMs)
          )
    if (report) console.log(formatReport(report))
    if (variants.length > 0)
        console.log(`\nPostHog's six runtimes, a real Redis:\n${formatVariantMatrix(variants)}`)
    writeFileSync(args.out, `${JSON.stringify({ ...report, variants }, null, 2)}\n`)
    console.log(`\nWrote ${args.out}`)
    const clean =
        !report ||
        (report.totals.lost === 0 &&
            report.totals.duplicatesStored === 0 &&
            report.totals.leaks === 0 &&
            report.totals.offHost === 0)
    const variantsClean = variants.every((r) => r.lost === 0 && r.unexpected === 0)
    process.exitCode = clean && variantsClean ? 0 : 1
}

if (require.main === module) {
    let args: CliArgs | undefined
    try {
        args = parseFaultsArgs(process.argv.slice(2))
    } catch (error) {
        console.error(`${(error as Error).message}\n\n${FAULTS_USAGE}`)
        process.exitCode = 2
    }
    if (args?.help) console.log(FAULTS_USAGE)
    else if (args)
        main(args).catch((error: unknown) => {
            console.error(error)
            process.exitCode = 1
        })
}
