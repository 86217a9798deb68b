/** The demo (`npm start`): skips, queue, call counts and stored contacts, with no token or email printed. */
import { spawnSync } from 'node:child_process'
import * as path from 'node:path'

import { main, readSampleEvents, RunReport, StartSummary } from '../../tools/start'

const ROOT = path.resolve(__dirname, '..', '..')
const TOKEN = 'demo_test_token_that_must_never_be_printed'

/** Every email of the bundled sample: none may reach the output or the plugin's log. */
const SAMPLE_EMAILS = readSampleEvents().flatMap((event) =>
    [event.properties?.email, (event.properties?.$set as Record<string, unknown> | undefined)?.email].filter(
        (value): value is string => typeof value === 'string' && value.includes('@')
    )
)

let summary: StartSummary
let printed: string[]

beforeAll(async () => {
    printed = []
    summary = await main({ print: (line) => printed.push(line), token: TOKEN })
})

function run(mode: RunReport['mode']): RunReport {
    const found = summary.runs.find((report) => report.mode === mode)
    if (!found) throw new Error(`no ${mode} run`)
    return found
}

describe('npm start, in process', () => {
    test('succeeds, and prints what it returns', () => {
        expect(summary.problems).toEqual([])
        expect(summary.ok).toBe(true)
        expect(printed).toEqual(summary.output)
    })

    test.each(['plugin-server', 'cdp'] as const)('%s: delivered equals what the emulator stored', (mode) => {
        const report = run(mode)
        expect(report.delivered).toBeGreaterThan(0)
        expect(report.delivered).toBe(report.stored)
        expect(report.received).toHaveLength(report.stored)
        expect(report.setupFailures).toEqual([])
    })

    test('plugin-server: every skip reason of the sample, and the outage event delivered from the queue', () => {
        const report = run('plugin-server')
        expect(Object.keys(report.skipped).sort()).toEqual(
            [
                'Intercom echo event',
                'ignored email domain',
                'no Intercom contact',
                'no valid email',
                'not a triggering event',
            ].sort()
        )
        expect(report.queued).toBe(1)
        expect(report.deliveredFromQueue).toBe(1)
        expect(report.failed).toEqual({})
        const outcomes = report.delivered + report.queued - report.deliveredFromQueue
        expect(outcomes + Object.values(report.skipped).reduce((a, b) => a + b, 0)).toBe(report.events)
    })

    test('plugin-server: calls are counted by route, setup apart, and the arithmetic printed holds', () => {
        const report = run('plugin-server')
        expect(report.setupCalls).toBe(report.workers)
        expect(report.callsByRoute['GET /me']).toBe(report.workers)
        const perRoute = Object.values(report.callsByRoute).reduce((a, b) => a + b, 0)
        expect(report.setupCalls + report.eventCalls).toBe(perRoute)
        // One POST per stored event, plus the one refused during the outage.
        expect(report.callsByRoute['POST /events']).toBe(report.stored + 1)
        expect(report.contactsCreated).toBe(1)
        const line = printed.find((text) => text.includes('Calls per delivered event'))
        expect(line).toContain((report.eventCalls / report.delivered).toFixed(2))
    })

    test('what Intercom stored: a lead by id, the user when a user and a lead share an email, revenue in cents', () => {
        const received = run('plugin-server').received
        expect(received).toContainEqual(
            expect.objectContaining({ eventName: 'demo_requested', role: 'lead' })
        )
        expect(received.filter((event) => event.contactName.startsWith('Alan'))).toEqual([
            expect.objectContaining({ contactName: 'Alan Turing', role: 'user' }),
        ])
        expect(received).toContainEqual(
            expect.objectContaining({
                eventName: 'purchased',
                metadata: expect.objectContaining({ revenue: { amount: 1999, currency: 'eur' } }),
            })
        )
    })

    test('cdp: the event sent during the outage fails (no queue in that runtime); the rest is delivered', () => {
        const report = run('cdp')
        expect(Object.values(report.failed)).toEqual([1])
        expect(Object.keys(report.failed)[0]).toMatch(/^RetryError: /)
        expect(report.delivered).toBe(run('plugin-server').delivered - 1)
    })

    test('neither the token nor any sample email is printed or logged', () => {
        const everything = [...printed, ...summary.runs.flatMap((report) => report.logs)].join('\n')
        expect(SAMPLE_EMAILS.length).toBeGreaterThan(5)
        expect(everything).not.toContain(TOKEN)
        for (const email of SAMPLE_EMAILS) expect(everything).not.toContain(email)
    })
})

describe('npm start, as a command', () => {
    test('exits 0, prints the header, and leaves nothing running', () => {
        const result = spawnSync(process.execPath, ['--import', 'tsx', 'tools/start.ts'], {
            cwd: ROOT,
            encoding: 'utf8',
            timeout: 20_000,
        })
        expect(result.error).toBeUndefined()
        expect(result.stderr).toBe('')
        expect(result.status).toBe(0)
        expect(result.stdout).toContain('PostHog → Intercom: a local demo run')
        expect(result.stdout).toMatch(/ok +plugin-server: delivered \(\d+\) = events stored by the emulator/)
    })
})
