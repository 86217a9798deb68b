/**
 * `npm start`: the plugin on bundled sample events against a local Intercom emulator, no token needed.
 *
 * Starts the emulator on a free loopback port, seeds the Intercom contacts of the sample, runs index.ts
 * through the PostHog host harness (plugin-server mode, then a short cdp section), and prints what happened:
 * delivered, skipped by reason, queued and retried, Intercom calls by route, and what Intercom stored.
 * Every server it starts is closed before it returns; the API key is a random one and is never printed.
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'

import { Emulator, StoredEvent, startEmulator } from './intercom/emulator'
import { createHarness, Harness, HarnessEvent, HarnessMode, HarnessSummary, LogLine } from './runtime/harness'
import { numberFlag, parseFlags, printedHelp, runCli } from './lib/flags'
import { formatCount, formatPairs, formatRatio, formatTable, heading, sortedCounts } from './lib/report'
import { SAMPLE_CONTACTS } from './intercom/sample-contacts'

export const SAMPLE_EVENTS_FILE = path.join(__dirname, 'sample-events.jsonl')

/** The plugin's form as a user would fill it in for this product (every value a string, as PostHog keeps it). */
export const DEMO_CONFIG: Record<string, string> = {
    region: 'US',
    triggeringEvents: '$identify, signed_up, invite_sent, plan_upgraded, purchase_completed, demo_requested',
    emailProperty: 'email',
    ignoredEmailDomains: 'hogflix.example',
    metadataProperties: 'plan, seats, revenue, trial_end_date, $current_url:url',
    eventNameMapping: '$identify:identified, plan_upgraded:upgraded plan, purchase_completed:purchased',
    useEuropeanDataStorage: 'No',
    contactSync: 'create or update contacts',
    personProperties: 'plan:Plan name, company_size:Company size',
    externalId: 'distinct_id',
    externalIdProperty: '',
    createAttributes: 'Yes',
    createContacts: 'off',
    companyGroupType: '',
    companyProperties: '',
}

/** Labels of the form fields, in the form's order (plugin.json). */
const CONFIG_LABELS: Array<[string, string]> = [
    ['region', 'Region'],
    ['triggeringEvents', 'Triggering events'],
    ['emailProperty', 'Email property'],
    ['ignoredEmailDomains', 'Ignored email domains'],
    ['metadataProperties', 'Event properties to send'],
    ['eventNameMapping', 'Event name mapping'],
    ['contactSync', 'Contact sync'],
    ['personProperties', 'Person properties to sync'],
    ['externalId', 'External ID'],
    ['createAttributes', 'Create missing custom attributes'],
    ['createContacts', 'Create contacts for unknown emails'],
]

const SETUP_ROUTE = 'GET /me'
const RECEIVED_SHOWN = 12
const LOG_LINES_SHOWN = 8

export interface StartOptions {
    /** Where the report goes, one line at a time. Default: stdout. */
    print?: (line: string) => void
    /** Also run the sample in PostHog's current (cdp) runtime, in a short second section. Default true. */
    cdp?: boolean
    /** plugin-server workers, sharing one cache. Default 2. */
    workers?: number
    /** JSON Lines of PostHog events; default tools/sample-events.jsonl. The last one arrives during the outage. */
    eventsFile?: string
    /** The emulator's API key; default a fresh random one. Tests pass one to check it is never printed. */
    token?: string
}

/** One event as Intercom stored it, with the contact it landed on. */
export interface ReceivedEvent {
    eventName: string
    role: string
    contactName: string
    metadata: Record<string, unknown>
}

export interface RunReport {
    mode: HarnessMode
    workers: number
    events: number
    /** Delivered by onEvent, plus by runEveryMinute from the retry queue. */
    delivered: number
    deliveredFromQueue: number
    /** Events the emulator stored (deduplicated like Intercom): must equal `delivered`. */
    stored: number
    skipped: Record<string, number>
    /** Not a triggering event, but the person was synced. */
    synced: number
    queued: number
    failed: Record<string, number>
    setupFailures: string[]
    /** GET /me, once per worker at setup. */
    setupCalls: number
    /** Every other call: the cost of the events. */
    eventCalls: number
    callsByRoute: Record<string, number>
    /** What the emulator answered while it was failing on purpose. */
    outageStatuses: number[]
    contactsCreated: number
    contactsUpdated: number
    attributesCreated: string[]
    received: ReceivedEvent[]
    /** The plugin's log lines above debug level, as PostHog would show them. */
    logs: string[]
}

export interface StartSummary {
    ok: boolean
    problems: string[]
    runs: RunReport[]
    /** Everything printed, line by line (the token must appear nowhere in it). */
    output: string[]
}

// ---------------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------------

function asObject(value: unknown): Record<string, unknown> | undefined {
    // Some export formats carry `properties` as a JSON-encoded string.
    const parsed = typeof value === 'string' ? (JSON.parse(value) as unknown) : value
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
        ? (parsed as Record<string, unknown>)
        : undefined
}

/** One row of a PostHog event export (JSON Lines) → the event the harness feeds the plugin. */
export function toHarnessEvent(row: Record<string, unknown>): HarnessEvent {
    const personProperties = asObject(row.person_properties)
    return {
        uuid: String(row.uuid),
        event: String(row.event),
        distinct_id: String(row.distinct_id),
        timestamp: String(row.timestamp),
        properties: asObject(row.properties) ?? {},
        ...(personProperties ? { person: { properties: personProperties } } : {}),
    }
}

export function readSampleEvents(file = SAMPLE_EVENTS_FILE): HarnessEvent[] {
    return readFileSync(file, 'utf8')
        .split('\n')
        .filter((line) => line.trim() !== '')
        .map((line) => toHarnessEvent(JSON.parse(line) as Record<string, unknown>))
}

// ---------------------------------------------------------------------------------------------------
// One run: a fresh emulator and harness for one runtime mode
// ---------------------------------------------------------------------------------------------------

interface RunInput {
    mode: HarnessMode
    workers: number
    events: HarnessEvent[]
    token: string
}

/** The events in order, one at a time, so each person's events happen in the order PostHog saw them. */
async function feed(harness: Harness, emulator: Emulator, events: HarnessEvent[]): Promise<void> {
    const normal = events.slice(0, -1)
    const duringOutage = events[events.length - 1]
    for (const event of normal) await harness.send(event)
    // Intercom fails for a moment: every call is answered 500, 502 or 503 while the last event arrives.
    emulator.configure({ errorRate: 1 })
    try {
        await harness.send(duringOutage)
    } finally {
        emulator.configure({ errorRate: 0 })
    }
    // PostHog's next runEveryMinute, run now rather than a minute later.
    if (harness.mode === 'plugin-server') await harness.runMinute()
}

function receivedEvents(emulator: Emulator): ReceivedEvent[] {
    const contacts = new Map(emulator.contacts().map((contact) => [contact.id, contact]))
    return emulator.events().map((event: StoredEvent) => {
        const contact = contacts.get(event.contact_id)
        return {
            eventName: event.event_name,
            role: contact?.role ?? '?',
            contactName: contact?.name ?? event.contact_id,
            metadata: event.metadata,
        }
    })
}

function pluginLogs(logs: LogLine[]): string[] {
    return logs.filter((line) => line.level !== 'debug').map((line) => `${line.level}: ${line.text}`)
}

function reportOf(input: RunInput, summary: HarnessSummary, emulator: Emulator): RunReport {
    const stats = emulator.stats()
    const setupCalls = stats.byRoute[SETUP_ROUTE] ?? 0
    return {
        mode: input.mode,
        workers: input.workers,
        events: summary.events,
        delivered: summary.delivered + summary.minute.delivered,
        deliveredFromQueue: summary.minute.delivered,
        stored: emulator.events().length,
        skipped: summary.skipped,
        synced: summary.statuses.synced ?? 0,
        queued: summary.queued,
        failed: summary.failed,
        setupFailures: summary.setupFailures,
        setupCalls,
        eventCalls: stats.calls - setupCalls,
        callsByRoute: stats.byRoute,
        outageStatuses: emulator
            .requests()
            .filter((request) => request.status >= 500)
            .map((request) => request.status),
        contactsCreated: stats.contactsCreated,
        contactsUpdated: stats.contactsUpdated,
        attributesCreated: emulator.dataAttributes().map((attribute) => attribute.name),
        received: receivedEvents(emulator),
        logs: pluginLogs(summary.logs),
    }
}

async function runMode(input: RunInput): Promise<RunReport> {
    const emulator = await startEmulator({ tokens: [input.token], contacts: SAMPLE_CONTACTS })
    let harness: Harness | undefined
    try {
        harness = await createHarness({
            mode: input.mode,
            workers: input.workers,
            config: { ...DEMO_CONFIG, intercomApiKey: input.token },
            emulatorUrl: emulator.url,
            // No clock: runEveryMinute is called once by hand after the outage.
            minuteMs: 0,
            // Should anything be retried by the runtime, a demo must not wait PostHog's 5 to 40 s.
            delayScale: 0.01,
        })
        await feed(harness, emulator, input.events)
        return reportOf(input, harness.summary(), emulator)
    } finally {
        await harness?.close()
        await emulator.close()
    }
}

// ---------------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------------

function introduction(events: HarnessEvent[], workers: number): string[] {
    const people = new Set(SAMPLE_CONTACTS.map((contact) => contact.email)).size
    return [
        'PostHog → Intercom: a local demo run',
        '====================================',
        'This runs the plugin (index.ts) the way PostHog runs it, against a local Intercom emulator:',
        'no Intercom account, no token, nothing leaves this machine.',
        '',
        `  1. An Intercom emulator starts on a free loopback port, seeded with ${SAMPLE_CONTACTS.length} contacts of ${people}`,
        '     people (Alan is both a user and an older lead). Its API key is random and never printed.',
        `  2. PostHog's plugin server loads the plugin on ${workers} workers sharing one cache; each worker`,
        '     checks the key with GET /me.',
        `  3. ${events.length - 1} sample PostHog events (tools/sample-events.jsonl) arrive one by one: pageviews,`,
        '     $identify, sign-ups, purchases with revenue, a lead asking for a demo, a new person (contact',
        '     sync creates them), a person Intercom does not know, staff on an ignored domain, events',
        '     without an email, and an Intercom echo event.',
        '  4. Intercom then fails for a moment (every call answered 5xx) while one more purchase arrives:',
        "     the plugin parks it in its retry queue and PostHog's next runEveryMinute delivers it.",
        '',
        'Plugin config (the API key field holds the random token):',
        ...formatPairs(CONFIG_LABELS.map(([key, label]) => [label, DEMO_CONFIG[key] || '(empty)'])),
    ]
}

function countLines(counts: Record<string, number>, indent = '    '): Array<[string, string]> {
    return sortedCounts(counts).map(([key, count]) => [`${indent}${key}`, formatCount(count)])
}

function total(counts: Record<string, number>): number {
    return Object.values(counts).reduce((sum, count) => sum + count, 0)
}

function deliveryLines(run: RunReport): string[] {
    const queuedNote =
        run.queued > 0
            ? `  (Intercom answered ${[...new Set(run.outageStatuses)].join('/')}; delivered later by runEveryMinute: ${run.deliveredFromQueue})`
            : ''
    return formatPairs([
        ['Events', formatCount(run.events)],
        [
            'Delivered to Intercom',
            `${formatCount(run.delivered)}  (${run.delivered - run.deliveredFromQueue} at once, ${run.deliveredFromQueue} from the retry queue)`,
        ],
        ['Skipped, by reason', formatCount(total(run.skipped))],
        ...countLines(run.skipped),
        ...(run.synced > 0
            ? ([['Synced only (no event sent)', formatCount(run.synced)]] as Array<[string, string]>)
            : []),
        ['Queued for retry', `${formatCount(run.queued)}${queuedNote}`],
        ['Failed', formatCount(total(run.failed))],
        ...countLines(run.failed),
    ])
}

function callLines(run: RunReport): string[] {
    const routes = { ...run.callsByRoute }
    delete routes[SETUP_ROUTE]
    return formatPairs([
        ['Intercom calls', formatCount(run.setupCalls + run.eventCalls)],
        [`    ${SETUP_ROUTE} (setup)`, `${run.setupCalls}  (one per worker, at start)`],
        ...countLines(routes),
        [
            'Calls per delivered event',
            `${formatRatio(run.eventCalls, run.delivered)}  (${run.eventCalls} calls after setup ÷ ${run.delivered} delivered, sync included)`,
        ],
        [
            'Contacts',
            `${run.contactsCreated} created, ${run.contactsUpdated} updated; custom attributes created: ${run.attributesCreated.join(', ') || 'none'}`,
        ],
    ]).concat([
        '  Most people in this sample have one to three events, so lookups and sync weigh; at 20 events a',
        '  person the cached lookup brings calls per delivered event to about 1.05 (see npm run bench).',
    ])
}

function receivedLines(run: RunReport): string[] {
    const shown = run.received.slice(0, RECEIVED_SHOWN)
    const rows = shown.map((event) => [
        event.eventName,
        event.role,
        event.contactName,
        JSON.stringify(event.metadata),
    ])
    const more = run.received.length - shown.length
    return [
        `What Intercom stored (${run.received.length} events; metadata as sent):`,
        ...formatTable(
            [
                { header: 'event' },
                { header: 'role' },
                { header: 'contact' },
                { header: 'metadata', ruleMax: 40 },
            ],
            rows,
            '  '
        ),
        ...(more > 0 ? [`  … and ${more} more`] : []),
    ]
}

function logLines(run: RunReport): string[] {
    const shown = run.logs.slice(0, LOG_LINES_SHOWN)
    const more = run.logs.length - shown.length
    return [
        `Plugin log (${run.logs.length} lines above debug level; counts, reasons and event uuids, no emails):`,
        ...shown.map((line) => `  ${line}`),
        ...(more > 0 ? [`  … and ${more} more`] : []),
    ]
}

function pluginServerSection(run: RunReport): string[] {
    return [
        ...heading(`plugin-server mode: ${run.workers} workers, shared cache, retry queue`),
        ...deliveryLines(run),
        '',
        ...callLines(run),
        '',
        ...receivedLines(run),
        '',
        ...logLines(run),
    ]
}

function sameCounts(a: Record<string, number>, b: Record<string, number>): boolean {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)])
    return [...keys].every((key) => a[key] === b[key])
}

function cdpSection(run: RunReport, reference: RunReport): string[] {
    const failures = sortedCounts(run.failed).map(([reason, count]) => `    ${count} × ${reason}`)
    const skippedNote = sameCounts(run.skipped, reference.skipped)
        ? 'same reasons as above'
        : sortedCounts(run.skipped)
              .map(([reason, count]) => `${reason}: ${count}`)
              .join(', ')
    return [
        ...heading("cdp mode (PostHog's current executor): no cache, no runEveryMinute"),
        `  Same events, fresh emulator, ${run.workers} worker; the plugin keeps its lookups in its own memory.`,
        ...formatPairs([
            ['Delivered', `${formatCount(run.delivered)}  (plugin-server mode: ${reference.delivered})`],
            ['Skipped', `${formatCount(total(run.skipped))}  (${skippedNote})`],
            ['Failed', formatCount(total(run.failed))],
        ]),
        ...failures,
        '  The purchase sent during the outage fails: this runtime has no cache, so no retry queue. In PostHog the',
        '  plugin first tries again in place for about 3 s, and the newest executor runs a RetryError twice more',
        '  (README, Reliability); this outage outlasts all of it. Delivery is idempotent (created_at), so a',
        '  replay of the event is safe.',
        ...formatPairs([
            [
                'Intercom calls',
                `${run.setupCalls + run.eventCalls} (${run.setupCalls} setup) → ${formatRatio(run.eventCalls, run.delivered)} per delivered event`,
            ],
        ]),
    ]
}

// ---------------------------------------------------------------------------------------------------
// Checks and entry point
// ---------------------------------------------------------------------------------------------------

function checkRun(run: RunReport, expectFailures: boolean): string[] {
    const problems: string[] = []
    if (run.delivered !== run.stored)
        problems.push(`${run.mode}: delivered ${run.delivered} but the emulator stored ${run.stored}`)
    if (run.setupFailures.length > 0)
        problems.push(`${run.mode}: setup failed: ${run.setupFailures.join('; ')}`)
    if (!expectFailures && total(run.failed) > 0)
        problems.push(`${run.mode}: ${total(run.failed)} events failed`)
    return problems
}

function checkLines(runs: RunReport[], problems: string[]): string[] {
    return [
        ...heading('Checks'),
        ...runs.map(
            (run) =>
                `  ${run.delivered === run.stored ? 'ok  ' : 'FAIL'} ${run.mode}: delivered (${run.delivered}) = events stored by the emulator (${run.stored})`
        ),
        ...(problems.length === 0
            ? ['  ok   no unexpected failure; the API key appears nowhere above', '']
            : problems.map((problem) => `  FAIL ${problem}`)),
    ]
}

/** Runs the demo and returns what it printed and measured; the CLI exits 0 when `ok`. */
export async function main(options: StartOptions = {}): Promise<StartSummary> {
    const output: string[] = []
    const print = (lines: string[]): void => {
        for (const line of lines) {
            output.push(line)
            ;(options.print ?? console.log)(line)
        }
    }
    const events = readSampleEvents(options.eventsFile)
    const workers = options.workers ?? 2
    // A fresh random key per run: nothing in the output can be a real credential, and the test can look for it.
    const token = options.token ?? `demo_${randomBytes(16).toString('hex')}`
    print(introduction(events, workers))

    const runs: RunReport[] = []
    const pluginServer = await runMode({ mode: 'plugin-server', workers, events, token })
    runs.push(pluginServer)
    print(pluginServerSection(pluginServer))
    if (options.cdp ?? true) {
        const cdp = await runMode({ mode: 'cdp', workers: 1, events, token })
        runs.push(cdp)
        print(cdpSection(cdp, pluginServer))
    }

    const problems = [
        ...checkRun(pluginServer, false),
        ...runs.slice(1).flatMap((run) => checkRun(run, true)),
    ]
    if (
        output.some((line) => line.includes(token)) ||
        runs.some((run) => run.logs.some((l) => l.includes(token)))
    )
        problems.push('the API key was printed')
    print(checkLines(runs, problems))
    return { ok: problems.length === 0, problems, runs, output }
}

export const USAGE = `Usage: npm start -- [options]

Runs the plugin (index.ts, as PostHog runs it) on sample events against a local Intercom emulator: no
account, no token, nothing leaves the machine. Exit code 0 when every check passes.

  --events <file>    JSON Lines of PostHog events (default tools/sample-events.jsonl)
  --workers <n>      plugin-server workers sharing one cache (default 2)
  --no-cdp           skip the section in PostHog's current executor
  --help             this text`

const FLAGS = {
    events: { type: 'string' },
    workers: { type: 'string' },
    'no-cdp': { type: 'boolean' },
    help: { type: 'boolean' },
} as const

/** Flags → the demo's options; `help` asks for the usage only. */
export function parseCli(argv: string[]): StartOptions & { help?: boolean } {
    const { values } = parseFlags(argv, FLAGS)
    return {
        help: values.help,
        eventsFile: values.events,
        workers: numberFlag('workers', values.workers, { integer: true, min: 1 }),
        cdp: values['no-cdp'] ? false : undefined,
    }
}

if (require.main === module) {
    void runCli('npm start --', async () => {
        const options = parseCli(process.argv.slice(2))
        if (printedHelp(options.help, USAGE)) return 0
        const summary = await main(options)
        return summary.ok ? 0 : 1
    }).then((code) => {
        process.exitCode = code
    })
}
