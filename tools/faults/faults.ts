/** The fault campaign (`npm run faults`): under faults, load and bad input the plugin loses, duplicates, leaks nothing.
 * Fault scenarios run index.ts in PostHog's sandbox (harness, each runtime) against the Intercom emulator with
 * seeded faults: every valid event ends stored once or reported, `lost` counts the rest. The bad-input corpus
 * runs against the in-process Intercom model, which checks every request. Every text the plugin produced is
 * searched for the canaries, every request's host must be Intercom's. The variant matrix is
 * tools/runtime/campaign.ts. __tests__/faults.test.ts runs a reduced campaign inside `npm test`.
 */
import { writeFileSync } from 'node:fs'

import type { Emulator, RecordedRequest, StoredContact, StoredEvent } from '../intercom/emulator'
import { startEmulator } from '../intercom/emulator'
import { createIntercom, STAND_IN_OPTIONS } from '../intercom/model'
import { requestViolations } from '../intercom/rules'
import { choiceFlag, flagTable, numberFlag, parseFlags, printedHelp, UsageError } from '../lib/flags'
import { addCount, formatItems } from '../lib/report'
import { formatVariantMatrix, runVariantScenario, VariantScenarioResult } from '../runtime/campaign'
import type { CacheStore, DrainResult, EventRecord, Harness, LogLine } from '../runtime/harness'
import {
    createHarness,
    createMemoryStorage,
    createMemoryStore,
    createPluginCache,
    describeError,
} from '../runtime/harness'
import type {
    ConsoleLike,
    FetchFn,
    FetchInit,
    FetchResponse,
    PluginExports,
    PluginMeta,
} from '../runtime/load-plugin'
import {
    cdpFetch,
    consoleTo,
    hostNodeFetch,
    isIntercomHost,
    loadPlugin,
    redirectingFetch,
    regionNameOf,
    toHeaderRecord,
} from '../runtime/load-plugin'
import { isVariantId, VARIANT_IDS, VariantId } from '../runtime/variants'
import { isTimeout, QUEUE_MAX_ATTEMPTS } from '../../index'
import type { BadConfigCase, BadEventCase, ClientName, FaultKind, FaultScenario } from './scenarios'
import type { PlannedEvent, Runtime, SandboxRuntime, Workload } from './scenarios'
import {
    BAD_CONFIG_CASES,
    BAD_EVENT_CASES,
    buildWorkload,
    campaignConfig,
    CANARY_TOKEN,
    CLIENT_TIMEOUT_MS,
    CORPUS_CONFIG,
    corpusEvent,
    EMAIL_MARK,
    EMAIL_SHAPE,
    FULL_TIMEOUT_MS,
    generatedEventCases,
    knownBugOf,
    RUNTIMES,
    SANDBOX_RUNTIMES,
    SCENARIOS,
    SKIP_REASONS,
    VALUE_MARK,
    VARIANT_SCENARIOS,
} from './scenarios'

/** runEveryMinute's "minute", and the scale of PostHog's 5/10/20/40 s RetryError delays. */
const MINUTE_MS = 100
const DELAY_SCALE = 0.002
/** Events in flight per worker. */
const CONCURRENCY = 4
/** A 429 whose reset has passed makes the plugin wait 10 s (~100 minutes): 400 covers that and still ends. */
const MAX_DRAIN_ROUNDS = 400
/** The plugin retries a dropped connection once, at once. */
const CALLS_PER_TRY = 2

// --- HTTP: the campaign's client, and an audit of every host asked for ---

/** Anything but https on one of Intercom's three hosts: refused, and reported. */
const offIntercom = (url: URL) => !isIntercomHost(url.hostname) || url.protocol !== 'https:'

/** The HTTP client under the plugin, its timeout cut to `timeoutMs`. node-fetch 2 (2021-23) honours the plugin's
 * `timeout`; the standard fetch (undici) ignores it, so PostHog's own limit is an AbortSignal, and a caller's
 * signal (the cdp adapter's) still applies. */
function httpClient(client: ClientName, timeoutMs: number): FetchFn {
    if (client === 'node-fetch') {
        return (input, init: FetchInit = {}) =>
            hostNodeFetch(input, { ...init, timeout: Math.min(init.timeout ?? timeoutMs, timeoutMs) })
    }
    return (input, { method, headers, body, redirect, signal: caller }: FetchInit = {}) => {
        const timeout = AbortSignal.timeout(timeoutMs)
        const signal = caller ? AbortSignal.any([caller, timeout]) : timeout
        return fetch(String(input), { method, body, redirect, headers: toHeaderRecord(headers), signal })
    }
}

/** Records the origin of every off-Intercom URL and counts timeouts; sends the rest to the emulator. */
function auditedFetch(emulatorUrl: string, client: ClientName, timeoutMs: number) {
    const redirect = redirectingFetch(emulatorUrl, httpClient(client, timeoutMs))
    const audit = { offHost: [] as string[], timeouts: 0 }
    const fetch: FetchFn = async (input, init) => {
        const url = new URL(String(input))
        if (offIntercom(url)) audit.offHost.push(url.origin)
        try {
            return await redirect(input, init)
        } catch (error) {
            if (isTimeout(error)) audit.timeouts++
            throw error
        }
    }
    return Object.assign(audit, { fetch })
}

// --- Leak audit ---

const SECRETS = { token: CANARY_TOKEN, email: EMAIL_MARK, 'property value': VALUE_MARK }
export type SecretKind = keyof typeof SECRETS

/** One line per text that holds a canary of `kinds`. Logs may hold none; the cache may hold property values
 * (queued metadata, by design) but neither the token nor an email. */
export function findLeaks(texts: Iterable<string>, kinds = Object.keys(SECRETS) as SecretKind[]): string[] {
    const leaks: string[] = []
    for (const text of texts) {
        const found: string[] = kinds.filter((kind) => text.includes(SECRETS[kind]))
        if (kinds.includes('email') && EMAIL_SHAPE.test(text)) found.push('email-shaped text')
        if (found.length > 0) leaks.push(`${found.join(', ')}: ${text.slice(0, 200)}`)
    }
    return leaks
}

// --- One scenario in one runtime ---

export interface RunOptions {
    /** Events per scenario. */
    events: number
    /** One HTTP client for every runtime (default: each runtime's own); undici is immune to nock's patch. */
    client?: ClientName
    /** Emulator fault seed. */
    seed?: number
    /** Another plugin file than index.ts: the audit's self-test runs deliberately leaky mutants. */
    pluginFile?: string
}

/** Everything one run is made of and left behind, for the accounting. */
interface Run {
    scenario: FaultScenario
    runtime: Runtime
    workload: Workload
    /** Email → id of the seeded user the email's events must land on. */
    users: Map<string, string>
    emulator: Emulator
    harness: Harness
    audit: ReturnType<typeof auditedFetch>
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
    let seen = 0
    return emulator.onRequest(() => {
        seen++
        for (const { share, patch } of scenario.midRun ?? [])
            if (seen === Math.max(1, Math.round(share * events))) emulator.configure(patch)
    })
}

/** Runs one scenario in one runtime to its end and accounts for every event. */
export async function runScenario(
    scenario: FaultScenario,
    runtime: Runtime,
    options: RunOptions
): Promise<ScenarioResult> {
    const started = Date.now()
    const workload = buildWorkload(scenario, options.events, started)
    const emulator = await startEmulator({ tokens: [CANARY_TOKEN], seed: options.seed ?? 1 })
    try {
        const users =
            scenario.contacts === 'seeded' ? seedContacts(emulator, workload) : new Map<string, string>()
        // The short timeout only where timeouts are the fault: elsewhere a loaded machine would inject its own.
        const timeoutMs = scenario.fault === 'timeout' ? CLIENT_TIMEOUT_MS : FULL_TIMEOUT_MS
        const audit = auditedFetch(emulator.url, options.client ?? runtime.client, timeoutMs)
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
        })
        try {
            // Faults start after setupPlugin, whose GET /me is not what is being tested.
            emulator.configure(scenario.faults)
            const stopMidRun = scheduleMidRun(emulator, scenario, workload.events.length)
            const wave = Math.ceil(workload.events.length / scenario.waves)
            for (let start = 0; start < workload.events.length; start += wave) {
                await harness.run(workload.events.slice(start, start + wave).map((planned) => planned.event))
            }
            if (scenario.recover) emulator.configure(scenario.recover)
            const drain = await harness.drain({ maxRounds: MAX_DRAIN_ROUNDS, intervalMs: MINUTE_MS })
            stopMidRun()
            const run: Run = { scenario, runtime, workload, users, emulator, harness, audit, logs, drain }
            return { ...account(run), durationMs: Date.now() - started }
        } finally {
            await harness.close()
        }
    } finally {
        await emulator.close()
    }
}

// --- Accounting: what Intercom holds against what was sent and what was reported ---

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

const DROPPED = /^Dropped queued event (\S+): (.+)$/
const BULK_DROP = /^Retry queue is full or unavailable: dropped (\d+) events/

/** Events reported as not (surely) delivered, uuid → reason: failed and skipped records, and the queue's
 * "Dropped queued event" lines; drops that name no uuid (unreadable item, bulk drop) are only counted. */
function collectReports(records: readonly EventRecord[], logs: LogLine[]) {
    const byUuid = new Map<string, string>()
    let unattributed = 0
    for (const { text } of logs) {
        const dropped = DROPPED.exec(text)
        if (dropped && dropped[1] === '(unreadable)') unattributed++
        else if (dropped) byUuid.set(dropped[1], dropped[2])
        unattributed += Number(BULK_DROP.exec(text)?.[1] ?? 0)
    }
    const unreasoned: string[] = []
    for (const record of records) {
        if (record.status !== 'failed' && record.status !== 'skipped') continue
        if (!record.reason?.trim()) unreasoned.push(record.uuid)
        byUuid.set(record.uuid, record.reason ?? '')
    }
    for (const [uuid, reason] of byUuid) if (!reason.trim()) unreasoned.push(uuid)
    return { byUuid, unattributed, unreasoned }
}

/** POST /events per event (contact id + name + created_at), and any made after a 401/422 for it. */
function tallyPosts(requests: RecordedRequest[]) {
    const posts: Record<string, number> = {}
    const refused = new Set<string>()
    let afterPermanent = 0
    for (const request of requests) {
        if (request.method !== 'POST' || request.path !== '/events') continue
        const body = (request.body ?? {}) as Record<string, unknown>
        const key = `${String(body.id)}|${String(body.event_name)}|${String(body.created_at)}`
        if (refused.has(key)) afterPermanent++
        addCount(posts, key)
        if (request.status === 401 || request.status === 422) refused.add(key)
    }
    return { maxPerEvent: Math.max(0, ...Object.values(posts)), afterPermanent }
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

function longestPause(requests: RecordedRequest[]): number {
    const times = requests.map((request) => request.at).sort((a, b) => a - b)
    let longest = 0
    for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i] - times[i - 1])
    return longest
}

/** Where each valid event ended: stored once, twice, on the wrong contact, reported, or nowhere. */
function checkValidEvents(
    valid: PlannedEvent[],
    stored: Map<string, StoredEvent[]>,
    users: Map<string, string>,
    reports: ReturnType<typeof collectReports>
) {
    const result = {
        deliveredOnce: 0,
        /** Valid events stored more than once (on two contacts): never acceptable. */
        duplicatesStored: 0,
        /** Valid events stored on another contact than the user that has the email. */
        misdirected: 0,
        /** Reported as failed although Intercom stored them (e.g. a timeout after the write). */
        reportedButStored: 0,
        /** Valid events not delivered but reported with a reason (failed, dropped from the queue). */
        reported: 0,
        lostUuids: [] as string[],
        /** Reported reasons by reasonClass. */
        reasons: {} as Record<string, number>,
    }
    for (const planned of valid) {
        const matches = stored.get(dedupKey(planned.email!, planned.name!, planned.createdAt!)) ?? []
        const reason = reports.byUuid.get(planned.event.uuid)
        if (reason !== undefined) addCount(result.reasons, reasonClass(reason))
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

function account({ scenario, runtime, workload, users, emulator, harness, audit, logs, drain }: Run) {
    const summary = harness.summary()
    const records = harness.records()
    const requests = emulator.requests()
    const stats = emulator.stats()
    const status = (code: string) => stats.byStatus[code] ?? 0
    const valid = workload.events.filter((planned) => planned.kind === 'valid')
    const outcomes = new Map(records.map((record) => [record.uuid, `${record.status}: ${record.reason}`]))
    // Invalid events must be skipped with the reason their kind names.
    const misskipped = workload.events.filter(({ kind, event }) => {
        return kind !== 'valid' && outcomes.get(event.uuid) !== `skipped: ${kind}`
    })
    const stored = storedByKey(emulator.events(), emulator.contacts())
    const reports = collectReports(records, logs)
    const delivery = checkValidEvents(valid, stored, users, reports)
    const validKeys = new Set(valid.map((p) => dedupKey(p.email!, p.name!, p.createdAt!)))
    const posts = tallyPosts(requests)
    const backoff = backoffTally(requests, emulator.options.windowSeconds * 1000)
    const contactsByRole: Record<string, number> = {}
    for (const c of emulator.contacts())
        addCount(contactsByRole, `${c.role} ${(c.email ?? '').toLowerCase()}`)
    const faultCounts: Record<FaultKind, number> = {
        '5xx': status('500') + status('502') + status('503'),
        '429': status('429'),
        timeout: audit.timeouts,
        dropped: status('dropped'),
        created: stats.contactsCreated,
        '401': status('401'),
        '422': status('422'),
        none: 0,
    }
    return {
        scenario: scenario.name,
        runtime: runtime.name,
        workers: scenario.workers,
        sent: workload.events.length,
        /** Events that should reach Intercom (the others must be skipped). */
        valid: valid.length,
        ...delivery,
        /** Stored events that match no valid event sent. */
        unexpectedStored: [...stored.keys()].filter((key) => !validKeys.has(key)).length,
        /** POSTs Intercom deduplicated (received > 1): retries of events already stored. */
        dedupedReceipts: emulator.events().reduce((sum, event) => sum + event.received - 1, 0),
        queuedNotDrained: drain.remaining,
        // Items still queued or dropped in bulk are reported, but not by uuid.
        lost: Math.max(0, delivery.lostUuids.length - drain.remaining - reports.unattributed),
        skipMismatches: misskipped.map((planned) => planned.event.uuid),
        /** Failures reported without a reason. */
        unreasoned: reports.unreasoned,
        /** RetryError retries by PostHog plus retry-queue retries. */
        retries: summary.retried + summary.minute.retried,
        maxPostsPerEvent: posts.maxPerEvent,
        // cdp: one try (and its immediate network retry); plugin server: the retry queue's tries.
        maxPostsAllowed: runtime.mode === 'cdp' ? CALLS_PER_TRY : QUEUE_MAX_ATTEMPTS * CALLS_PER_TRY,
        /** POSTs of an event after Intercom refused it for good (401/422). */
        retriedAfterPermanent: posts.afterPermanent,
        calls: stats.calls,
        searches: stats.searches,
        emails: workload.emails.length,
        contactsCreated: stats.contactsCreated,
        /** Emails with more than one contact of the same role after the run: a create race lost. */
        duplicateContacts: Object.values(contactsByRole).filter((count) => count > 1).length,
        rateLimited: stats.rateLimited,
        /** Calls that arrived after the first 429 of their window (in flight, or not backing off)… */
        callsAfter429: backoff.after,
        /** …and their bound: every worker's requests in flight, per window with a 429. */
        callsAfter429Allowed: backoff.windows * scenario.workers * CONCURRENCY,
        invalidRequests: status('400'),
        /** How often each fault happened: emulator statuses, client timeouts, contacts created. */
        faultCounts,
        /** Longest time without a request reaching Intercom (a rate-limit wait shows here). */
        longestPauseMs: longestPause(requests),
        logLines: logs.length,
        drainRounds: drain.rounds,
        drained: drain.empty,
        offHost: audit.offHost,
        leaks: findLeaks([
            ...logs.map((line) => line.text),
            ...records.map((record) => record.reason ?? ''),
            ...summary.setupFailures,
            ...Object.keys(summary.failed),
            ...Object.keys(summary.minute.failed),
        ]),
    }
}

export type ScenarioResult = ReturnType<typeof account> & { durationMs: number }

// --- Bad input: the sandboxed plugin against the in-process Intercom model ---

/** `eventStatus`: POST /events answers it instead of 202 (e.g. 503, to fill the retry queue). */
export type FakeIntercomOptions = Pick<BadConfigCase, 'workspaceRegion' | 'rejectToken'> & {
    eventStatus?: number
}

/**
 * The Intercom model in the process, open world (every searched email is a user) and any token accepted:
 * records every request with the rules it breaks, and refuses hosts other than Intercom's.
 */
function fakeIntercom(options: FakeIntercomOptions) {
    const intercom = createIntercom({ ...STAND_IN_OPTIONS, tokens: options.rejectToken ? [] : ['*'] })
    const calls: { url: string; violations: string[]; offHost: boolean }[] = []
    const fetch = async (input: string | URL, init: FetchInit = {}): Promise<FetchResponse> => {
        const url = new URL(String(input))
        const method = (init.method ?? 'GET').toUpperCase()
        const offHost = offIntercom(url)
        const violations = requestViolations(method, url.pathname, toHeaderRecord(init.headers), init.body)
        calls.push({ url: url.origin + url.pathname, violations, offHost })
        if (offHost) throw new Error(`refused: ${url.hostname} is not an Intercom host`)
        const region = options.workspaceRegion ?? regionNameOf(url.hostname)
        intercom.configure({ region: region as BadConfigCase['workspaceRegion'] })
        const { eventStatus } = options
        if (eventStatus && eventStatus !== 202 && method === 'POST' && url.pathname === '/events') {
            const errors = [{ code: 'service_unavailable', message: 'unavailable' }]
            return Response.json({ type: 'error.list', errors }, { status: eventStatus })
        }
        return intercom.fetch(url, init)
    }
    return { fetch, calls }
}

/** One plugin instance as PostHog runs it: its sandbox, meta, fake Intercom and captured log. */
export interface SandboxPlugin {
    runtime: SandboxRuntime
    plugin: PluginExports
    meta: PluginMeta
    intercom: ReturnType<typeof fakeIntercom>
    logs: string[]
    /** plugin-server: every key and value written to the cache, to audit what the plugin keeps there. */
    storeWrites: string[]
    setupError?: string
}

/** The meta each runtime hands the plugin (see harness.ts for the full account of both). */
function sandboxMeta(config: Record<string, string>, instance: SandboxPlugin, console: ConsoleLike) {
    if (instance.runtime === 'cdp') {
        const { debug, log, warn, error } = console
        const fetch = cdpFetch(instance.intercom.fetch)
        const logger = { debug, log, warn, error }
        return { config: { ...config }, global: {}, logger, geoip: { locate: () => null }, fetch }
    }
    const store = createMemoryStore()
    const recording: CacheStore = {
        ...store,
        set: (key, value, ttl) => (instance.storeWrites.push(key, value), store.set(key, value, ttl)),
        lpush: (key, values) => (instance.storeWrites.push(key, ...values), store.lpush(key, values)),
    }
    return {
        config: { ...config },
        global: {},
        attachments: {},
        cache: createPluginCache(recording, 'bad-input/'),
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
    const console = consoleTo((_level, args) => logs.push(args.map(String).join(' ')))
    const plugin = loadPlugin({ fetch: intercom.fetch, console })
    const instance: SandboxPlugin = { runtime, plugin, meta: {}, intercom, logs, storeWrites: [] }
    instance.meta = sandboxMeta(config, instance, console)
    try {
        await plugin.setupPlugin?.(instance.meta)
    } catch (error) {
        instance.setupError = describeError(error)
    }
    return instance
}

/** What is wrong with an onEvent outcome, given what the case expects. */
function outcomeProblems(c: BadEventCase, status: string, reason: string | undefined): string[] {
    const problems: string[] = []
    if (!['delivered', 'skipped', 'synced'].includes(status)) problems.push(`status ${status}`)
    if (status === 'skipped' && !(SKIP_REASONS as readonly string[]).includes(reason ?? ''))
        problems.push(`skipped without a documented reason (${reason ?? 'none'})`)
    if (c.expect.status === 'delivered' && status !== 'delivered')
        problems.push(`expected delivered, got ${status} (${reason})`)
    if (c.expect.status === 'skipped' && (status !== 'skipped' || reason !== c.expect.reason))
        problems.push(`expected skipped "${c.expect.reason}", got ${status} (${reason ?? 'no reason'})`)
    return problems
}

/** One event through an already set-up plugin; with a valid fake Intercom, any throw is a crash. */
export async function runBadEvent(instance: SandboxPlugin, c: BadEventCase) {
    const before = instance.intercom.calls.length
    // The cdp executor adds `person` to the event.
    const person = { uuid: 'p-1', team_id: 1, properties: c.person, created_at: '' }
    const event = instance.runtime === 'cdp' && c.person ? { ...c.event, person } : c.event
    let status = 'thrown'
    let reason: string | undefined
    let crash: string | undefined
    try {
        const outcome = ((await instance.plugin.onEvent?.(event, instance.meta)) ?? {}) as Record<
            string,
            unknown
        >
        status = typeof outcome.status === 'string' ? outcome.status : 'none'
        reason = typeof outcome.reason === 'string' ? outcome.reason : undefined
    } catch (error) {
        crash = describeError(error)
    }
    const calls = instance.intercom.calls.slice(before)
    const violations = calls.flatMap((call) => call.violations)
    const offHost = calls.filter((call) => call.offHost).map((call) => call.url)
    const problems = [
        ...(crash ? [`crashed: ${crash}`] : outcomeProblems(c, status, reason)),
        ...violations.map((v) => `invalid request: ${v}`),
        ...offHost.map((url) => `request off Intercom: ${url}`),
    ]
    const { name } = c
    return { name, runtime: instance.runtime, status, reason, crash, violations, offHost, problems }
}

/** Set-up plugins by runtime and config, so that a corpus reuses instances as PostHog does. */
export class SandboxPool {
    private readonly instances = new Map<string, Promise<SandboxPlugin>>()

    get(runtime: SandboxRuntime, config: Record<string, string>): Promise<SandboxPlugin> {
        const key = `${runtime} ${JSON.stringify(config)}`
        if (!this.instances.has(key)) this.instances.set(key, startSandboxPlugin(runtime, config))
        return this.instances.get(key)!
    }

    async all(): Promise<SandboxPlugin[]> {
        return Promise.all(this.instances.values())
    }
}

export function caseConfig(c: BadEventCase): Record<string, string> {
    return { ...CORPUS_CONFIG, ...c.config }
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
export async function runBadConfig(runtime: SandboxRuntime, c: BadConfigCase) {
    const instance = await startSandboxPlugin(runtime, c.config, c)
    const { setupError, intercom } = instance
    const goodEvent = { name: c.name, event: corpusEvent(), expect: { status: 'any' } } as const
    const eventProblems = setupError ? [] : (await runBadEvent(instance, goodEvent)).problems
    const hosts = [...new Set(intercom.calls.map((call) => new URL(call.url).hostname))]
    return {
        name: c.name,
        runtime,
        setupError,
        hosts,
        offHost: intercom.calls.filter((call) => call.offHost).map((call) => call.url),
        problems: [...configProblems(c, setupError, hosts), ...eventProblems],
        /** Every text the plugin produced: log lines and the setup error. */
        texts: [...instance.logs, ...(setupError ? [setupError] : [])],
    }
}

/** Every case (hand-written and generated) in both runtimes, then every config: failures, known bugs, leaks. */
export async function runBadInputs(options: { seed: number; generated: number }) {
    const cases = [...BAD_EVENT_CASES, ...generatedEventCases(options.seed, options.generated)]
    const pool = new SandboxPool()
    const events: Awaited<ReturnType<typeof runBadEvent>>[] = []
    const configs: Awaited<ReturnType<typeof runBadConfig>>[] = []
    /** Results that miss their expectation (crashes, invalid requests and wrong reasons included). */
    const failures: { name: string; runtime: string; problems: string[] }[] = []
    const knownBugHits: Record<string, number> = {}
    for (const runtime of SANDBOX_RUNTIMES) {
        for (const c of cases.filter((c) => !c.runtimes || c.runtimes.includes(runtime))) {
            const result = await runBadEvent(await pool.get(runtime, caseConfig(c)), c)
            events.push(result)
            // Known bugs a result hits: by its violations, or by the case's own mark.
            const ids = new Set(
                result.violations.map((v) => knownBugOf(v)?.id).filter((id): id is string => !!id)
            )
            if (c.knownBug && result.problems.length > 0) ids.add(c.knownBug)
            for (const id of ids) addCount(knownBugHits, id)
            // A failure unless the case is marked, or every problem comes from a known bug.
            const problems = c.knownBug
                ? []
                : result.problems.filter((problem) => !knownBugOf(problem.replace(/^invalid request: /, '')))
            if (problems.length > 0) failures.push({ name: c.name, runtime, problems })
        }
    }
    for (const runtime of SANDBOX_RUNTIMES) {
        for (const c of BAD_CONFIG_CASES) configs.push(await runBadConfig(runtime, c))
    }
    for (const { name, runtime, problems } of configs)
        if (problems.length > 0) failures.push({ name, runtime, problems })
    const instances = await pool.all()
    return {
        eventCases: cases.length,
        configCases: BAD_CONFIG_CASES.length,
        /** Runs: cases × runtimes. */
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
        /** Keys and values the plugin wrote to the cache that hold an email or the token. */
        cacheLeaks: findLeaks(
            instances.flatMap((instance) => instance.storeWrites),
            ['token', 'email']
        ),
        events,
        configs,
    }
}

export type BadInputReport = Awaited<ReturnType<typeof runBadInputs>>

// --- The campaign and its report ---

export interface CampaignOptions extends RunOptions {
    scenarios?: readonly FaultScenario[]
    /** Generated bad events on top of the hand-written corpus. */
    generated?: number
    onResult?: (result: ScenarioResult) => void
}

export async function runCampaign(options: CampaignOptions) {
    const seed = options.seed ?? 1
    const generated = options.generated ?? 200
    const scenarios: ScenarioResult[] = []
    for (const scenario of options.scenarios ?? SCENARIOS) {
        for (const runtime of RUNTIMES) {
            const result = await runScenario(scenario, runtime, { ...options, seed })
            scenarios.push(result)
            options.onResult?.(result)
        }
    }
    // Per-case details would bury the figures in the JSON.
    const badInputs = { ...(await runBadInputs({ seed, generated })), events: undefined, configs: undefined }
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

export type CampaignReport = Awaited<ReturnType<typeof runCampaign>>

/** One row per scenario run: the first two columns name it, the figures are right-aligned. */
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

export function formatReport(report: CampaignReport): string {
    const { badInputs: bad, totals } = report
    const columns = COLUMNS.map(
        ([header, cell], i) => ({ header, cell, align: i < 2 ? 'left' : 'right' }) as const
    )
    const reasons: Record<string, number> = {}
    for (const r of report.scenarios)
        for (const [reason, n] of Object.entries(r.reasons)) addCount(reasons, reason, n)
    const bugs = Object.entries(bad.knownBugHits).map(([id, n]) => `${id} ×${n}`)
    return [
        ...formatItems(columns, report.scenarios),
        '',
        `Scenarios run: ${totals.runs} (${totals.sent} events) · lost: ${totals.lost} · duplicates stored: ${totals.duplicatesStored} · leaks: ${totals.leaks} · requests off Intercom: ${totals.offHost}`,
        `Bad inputs tried: ${bad.eventCases} events + ${bad.configCases} configs, in 2 runtimes = ${bad.runs} runs · crashes: ${bad.crashes} · invalid requests: ${bad.invalidRequests} · unexplained failures: ${bad.failures.length} · leaks: ${bad.leaks.length} · cache leaks: ${bad.cacheLeaks.length}`,
        `Known plugin bugs hit: ${bugs.join(', ') || 'none'}`,
        '',
        'Reasons reported for undelivered events:',
        ...Object.entries(reasons)
            .sort((a, b) => b[1] - a[1])
            .map(([reason, n]) => `  ${String(n).padStart(5)}  ${reason}`),
    ].join('\n')
}

// --- The command line ---

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

const FLAGS = flagTable(['events', 'out', 'client', 'scenario', 'variants', 'generated'], ['help', 'small'])

/** Parses the command line; throws a clear message for an unknown flag, scenario or value. */
export function parseFaultsArgs(argv: readonly string[]) {
    // An unknown flag is named as typed, before parseArgs words it its own way.
    const flagName = (arg: string) => arg.replace(/^--?/, '').split('=')[0]
    const unknown = argv.find((arg) => arg.startsWith('-') && !Object.keys(FLAGS).includes(flagName(arg)))
    if (unknown !== undefined) throw new UsageError(`Unknown option '${unknown}'`)
    const { values } = parseFlags([...argv], FLAGS)
    const known = [...SCENARIOS, ...VARIANT_SCENARIOS].map((s) => s.name)
    if (values.scenario !== undefined && !known.includes(values.scenario)) {
        throw new UsageError(`Unknown scenario '${values.scenario}'. Known: ${known.join(', ')}`)
    }
    const variants = values.variants?.split(',').map((part) => Number(part.trim())) ?? [...VARIANT_IDS]
    if (!variants.every(isVariantId)) {
        throw new UsageError(`--variants takes numbers 1 to 6, not '${values.variants}'`)
    }
    return {
        help: values.help ?? false,
        events: numberFlag('events', values.events, { integer: true, min: 0 }) ?? 200,
        out: values.out ?? 'faults-results.json',
        client: choiceFlag<ClientName>('client', values.client, ['undici', 'node-fetch']),
        scenario: values.scenario,
        variants: variants as VariantId[],
        small: values.small ?? false,
        generated: numberFlag('generated', values.generated, { integer: true, min: 0 }) ?? 300,
    }
}

/** A harness scenario runs alone; a variant scenario runs alone in the matrix; none named: everything. */
async function main(args: ReturnType<typeof parseFaultsArgs>): Promise<void> {
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
    // The variant matrix: each selected scenario in each selected variant it applies to.
    const variants: VariantScenarioResult[] = []
    for (const scenario of isVariantScenario || !args.scenario ? VARIANT_SCENARIOS : []) {
        if ((args.scenario && scenario.name !== args.scenario) || (args.small && !scenario.smallEvents))
            continue
        for (const variant of args.variants.filter((v) => scenario.variants.includes(v))) {
            variants.push(await runVariantScenario(scenario, variant, { small: args.small }))
            progress(`${scenario.name} / variant ${variant}`, variants[variants.length - 1].durationMs)
        }
    }
    if (report) console.log(formatReport(report))
    if (variants.length > 0)
        console.log(`\nPostHog's six runtimes, a real Redis:\n${formatVariantMatrix(variants)}`)
    writeFileSync(args.out, `${JSON.stringify({ ...report, variants }, null, 2)}\n`)
    console.log(`\nWrote ${args.out}`)
    const { lost, duplicatesStored, leaks, offHost } = report?.totals ?? {}
    const clean = !report || (lost === 0 && duplicatesStored === 0 && leaks === 0 && offHost === 0)
    process.exitCode = clean && variants.every((r) => r.lost === 0 && r.unexpected === 0) ? 0 : 1
}

if (require.main === module) {
    try {
        const args = parseFaultsArgs(process.argv.slice(2))
        if (!printedHelp(args.help, FAULTS_USAGE)) {
            main(args).catch((error: unknown) => {
                console.error(error)
                process.exitCode = 1
            })
        }
    } catch (error) {
        console.error(`${(error as Error).message}\n\n${FAULTS_USAGE}`)
        process.exitCode = 2
    }
}
