/** `npm start`: the plugin on bundled sample events against a local Intercom emulator, no token needed. */
// index.ts runs in the PostHog host harness: plugin-server mode, then a short cdp section, each on a fresh emulator.
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'

import manifest from '../plugin.json'
import { Emulator, startEmulator } from './intercom/emulator'
import { SAMPLE_CONTACTS } from './intercom/sample-contacts'
import { flagTable, numberFlag, parseFlags, printedHelp, runCli } from './lib/flags'
import {
    formatCount,
    formatPairs,
    formatItems,
    formatRatio,
    heading,
    ItemColumn,
    sortedCounts,
    sumCounts,
} from './lib/report'
import { toExportRow } from './replay/rows'
import { createHarness, Harness, HarnessEvent, HarnessMode, HarnessSummary } from './runtime/harness'

const SAMPLE_EVENTS_FILE = path.join(__dirname, 'sample-events.jsonl')

/** The plugin's form as a user would fill it in for this product (every value a string, as PostHog keeps it). */
const DEMO_CONFIG: Record<string, string> = {
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

/** The fields the introduction shows, with their labels, in the form's order (plugin.json). */
const SHOWN_FIELDS = manifest.config.flatMap((field) =>
    'key' in field && DEMO_CONFIG[field.key] && field.key !== 'useEuropeanDataStorage'
        ? [[field.name, DEMO_CONFIG[field.key]] as [string, string]]
        : []
)

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

/** What one run did, as the harness and the emulator saw it. */
export type RunReport = ReturnType<typeof reportOf>

/** What main() printed (line by line; the token must appear nowhere in it) and measured. */
export type StartSummary = Awaited<ReturnType<typeof main>>

/** The events of a PostHog export (JSON Lines), read as the replay reads them, as the harness takes them. */
export function readSampleEvents(file = SAMPLE_EVENTS_FILE): HarnessEvent[] {
    const lines = readFileSync(file, 'utf8')
        .split('\n')
        .filter((line) => line.trim() !== '')
    return lines.map((line, index) => {
        const row = toExportRow(JSON.parse(line))
        if (typeof row === 'string') throw new Error(`${file}, event ${index + 1}: ${row}`)
        const { person_properties: properties, timestamp = '', ...event } = row
        return { ...event, timestamp, ...(properties ? { person: { properties } } : {}) }
    })
}

/** The events in order, one at a time, so each person's events happen in the order PostHog saw them. */
async function feed(harness: Harness, emulator: Emulator, events: HarnessEvent[]): Promise<void> {
    for (const event of events.slice(0, -1)) await harness.send(event)
    // Intercom fails for a moment: every call is answered 500, 502 or 503 while the last event arrives.
    emulator.configure({ errorRate: 1 })
    try {
        await harness.send(events[events.length - 1])
    } finally {
        emulator.configure({ errorRate: 0 })
    }
    // PostHog's next runEveryMinute, run now rather than a minute later.
    if (harness.mode === 'plugin-server') await harness.runMinute()
}

function reportOf(summary: HarnessSummary, emulator: Emulator) {
    const stats = emulator.stats()
    const setupCalls = stats.byRoute[SETUP_ROUTE] ?? 0
    const contacts = new Map(emulator.contacts().map((contact) => [contact.id, contact]))
    const outage = emulator.requests().filter((request) => request.status >= 500)
    const logs = summary.logs.filter((line) => line.level !== 'debug')
    return {
        mode: summary.mode,
        workers: summary.workers,
        events: summary.events,
        // By onEvent, plus by runEveryMinute from the retry queue: must equal what the emulator stored.
        delivered: summary.delivered + summary.minute.delivered,
        deliveredFromQueue: summary.minute.delivered,
        stored: emulator.events().length,
        skipped: summary.skipped,
        synced: summary.statuses.synced ?? 0, // not a triggering event, but the person was synced
        queued: summary.queued,
        failed: summary.failed,
        setupFailures: summary.setupFailures,
        setupCalls, // GET /me, once per worker
        eventCalls: stats.calls - setupCalls,
        callsByRoute: stats.byRoute,
        // What the emulator answered while it was failing on purpose.
        outageStatuses: outage.map((request) => request.status),
        contactsCreated: stats.contactsCreated,
        contactsUpdated: stats.contactsUpdated,
        attributesCreated: emulator.dataAttributes().map((attribute) => attribute.name),
        // Each event as Intercom stored it, with the contact it landed on.
        received: emulator.events().map((event) => ({
            eventName: event.event_name,
            role: contacts.get(event.contact_id)?.role ?? '?',
            contactName: contacts.get(event.contact_id)?.name ?? event.contact_id,
            metadata: event.metadata,
        })),
        // The plugin's log lines above debug level, as PostHog would show them.
        logs: logs.map((line) => `${line.level}: ${line.text}`),
    }
}

async function runMode(mode: HarnessMode, workers: number, events: HarnessEvent[], token: string) {
    const emulator = await startEmulator({ tokens: [token], contacts: SAMPLE_CONTACTS })
    let harness: Harness | undefined
    try {
        harness = await createHarness({
            mode,
            workers,
            config: { ...DEMO_CONFIG, intercomApiKey: token },
            emulatorUrl: emulator.url,
            // No clock: runEveryMinute is called once by hand after the outage.
            minuteMs: 0,
            // Should anything be retried by the runtime, a demo must not wait PostHog's 5 to 40 s.
            delayScale: 0.01,
        })
        await feed(harness, emulator, events)
        return reportOf(harness.summary(), emulator)
    } finally {
        await harness?.close()
        await emulator.close()
    }
}

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
        ...formatPairs(SHOWN_FIELDS),
    ]
}

/** `label, count` pairs, largest first, indented under the line above them. */
function countLines(counts: Record<string, number>): Array<[string, string]> {
    return sortedCounts(counts).map(([key, count]) => [`    ${key}`, formatCount(count)])
}

function deliveryLines(run: RunReport): string[] {
    const fromQueue = run.deliveredFromQueue
    const delivered = `${formatCount(run.delivered)}  (${run.delivered - fromQueue} at once, ${fromQueue} from the retry queue)`
    const outage = `Intercom answered ${[...new Set(run.outageStatuses)].join('/')}; delivered later by runEveryMinute`
    const queuedNote = run.queued > 0 ? `  (${outage}: ${fromQueue})` : ''
    return formatPairs([
        ['Events', formatCount(run.events)],
        ['Delivered to Intercom', delivered],
        ['Skipped, by reason', formatCount(sumCounts(run.skipped))],
        ...countLines(run.skipped),
        ...(run.synced > 0
            ? [['Synced only (no event sent)', formatCount(run.synced)] as [string, string]]
            : []),
        ['Queued for retry', `${formatCount(run.queued)}${queuedNote}`],
        ['Failed', formatCount(sumCounts(run.failed))],
        ...countLines(run.failed),
    ])
}

function callLines(run: RunReport): string[] {
    const { [SETUP_ROUTE]: setup, ...routes } = run.callsByRoute
    const perEvent = `${formatRatio(run.eventCalls, run.delivered)}  (${run.eventCalls} calls after setup ÷ ${run.delivered} delivered, sync included)`
    const contacts = `${run.contactsCreated} created, ${run.contactsUpdated} updated; custom attributes created: ${run.attributesCreated.join(', ') || 'none'}`
    return [
        ...formatPairs([
            ['Intercom calls', formatCount(run.setupCalls + run.eventCalls)],
            [`    ${SETUP_ROUTE} (setup)`, `${setup ?? 0}  (one per worker, at start)`],
            ...countLines(routes),
            ['Calls per delivered event', perEvent],
            ['Contacts', contacts],
        ]),
        '  Most people in this sample have one to three events, so lookups and sync weigh; at 20 events a',
        '  person the cached lookup brings calls per delivered event to about 1.05 (see npm run bench).',
    ]
}

const RECEIVED_COLUMNS: ItemColumn<RunReport['received'][number]>[] = [
    { header: 'event', cell: (event) => event.eventName },
    { header: 'role', cell: (event) => event.role },
    { header: 'contact', cell: (event) => event.contactName },
    { header: 'metadata', ruleMax: 40, cell: (event) => JSON.stringify(event.metadata) },
]

const more = (hidden: number): string[] => (hidden > 0 ? [`  … and ${hidden} more`] : [])

function pluginServerSection(run: RunReport): string[] {
    return [
        ...heading(`plugin-server mode: ${run.workers} workers, shared cache, retry queue`),
        ...deliveryLines(run),
        '',
        ...callLines(run),
        '',
        `What Intercom stored (${run.received.length} events; metadata as sent):`,
        ...formatItems(RECEIVED_COLUMNS, run.received.slice(0, RECEIVED_SHOWN), '  '),
        ...more(run.received.length - RECEIVED_SHOWN),
        '',
        `Plugin log (${run.logs.length} lines above debug level; counts, reasons and event uuids, no emails):`,
        ...run.logs.slice(0, LOG_LINES_SHOWN).map((line) => `  ${line}`),
        ...more(run.logs.length - LOG_LINES_SHOWN),
    ]
}

function cdpSection(run: RunReport, reference: RunReport): string[] {
    const skipped = sortedCounts(run.skipped)
    const sameSkips = JSON.stringify(skipped) === JSON.stringify(sortedCounts(reference.skipped))
    const reasons = skipped.map(([reason, n]) => `${reason}: ${n}`).join(', ')
    const skippedNote = sameSkips ? 'same reasons as above' : reasons
    return [
        ...heading("cdp mode (PostHog's current executor): no cache, no runEveryMinute"),
        `  Same events, fresh emulator, ${run.workers} worker; the plugin keeps its lookups in its own memory.`,
        ...formatPairs([
            ['Delivered', `${formatCount(run.delivered)}  (plugin-server mode: ${reference.delivered})`],
            ['Skipped', `${formatCount(sumCounts(run.skipped))}  (${skippedNote})`],
            ['Failed', formatCount(sumCounts(run.failed))],
        ]),
        ...sortedCounts(run.failed).map(([reason, count]) => `    ${count} × ${reason}`),
        '  The purchase sent during the outage fails: this runtime has no cache, so no retry queue. In PostHog the',
        '  plugin first tries again in place for about 3 s, and the newest executor runs a RetryError twice more',
        '  (README, Reliability); this outage outlasts all of it. Delivery is idempotent (created_at), so a',
        '  replay of the event is safe.',
        `  Intercom calls  ${run.setupCalls + run.eventCalls} (${run.setupCalls} setup) → ${formatRatio(run.eventCalls, run.delivered)} per delivered event`,
    ]
}

function problemsOf(runs: RunReport[]): string[] {
    return runs.flatMap((run, index) => {
        const failed = sumCounts(run.failed)
        const problems = [
            run.delivered !== run.stored &&
                `delivered ${run.delivered} but the emulator stored ${run.stored}`,
            run.setupFailures.length > 0 && `setup failed: ${run.setupFailures.join('; ')}`,
            // The cdp run is expected to fail the event sent during the outage.
            index === 0 && failed > 0 && `${failed} events failed`,
        ]
        return problems.flatMap((problem) => (problem ? [`${run.mode}: ${problem}`] : []))
    })
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
export async function main(options: StartOptions = {}) {
    const output: string[] = []
    const print = (lines: string[]): void => {
        output.push(...lines)
        lines.forEach((line) => (options.print ?? console.log)(line))
    }
    const events = readSampleEvents(options.eventsFile)
    const workers = options.workers ?? 2
    // A fresh random key per run: nothing in the output can be a real credential, and the test can look for it.
    const token = options.token ?? `demo_${randomBytes(16).toString('hex')}`
    print(introduction(events, workers))
    const runs = [await runMode('plugin-server', workers, events, token)]
    print(pluginServerSection(runs[0]))
    if (options.cdp ?? true) {
        runs.push(await runMode('cdp', 1, events, token))
        print(cdpSection(runs[1], runs[0]))
    }
    const problems = problemsOf(runs)
    if ([...output, ...runs.flatMap((run) => run.logs)].some((line) => line.includes(token)))
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

const FLAGS = flagTable(['events', 'workers'], ['no-cdp', 'help'])

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
