/** The benchmark (`npm run bench`): its results file, call arithmetic, workload and flags. */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

import {
    BenchResults,
    buildWorkload,
    main,
    parseCli,
    QUICK,
    runBench,
    ScenarioResult,
    USAGE,
    workloadFloor,
} from '../../tools/bench/bench'

// Tiny sizes: far below the emulator's rate limit, so the call counts are exact. Timings are not asserted.
const EVENTS = 40
const PEOPLE = 8
const WORKERS = 2

let directory: string
let results: BenchResults
let written: BenchResults

beforeAll(async () => {
    directory = mkdtempSync(path.join(tmpdir(), 'bench-test-'))
    const out = path.join(directory, 'bench.json')
    results = await runBench({
        events: EVENTS,
        people: PEOPLE,
        workers: WORKERS,
        scenarios: ['plugin-server', 'cdp', 'no-cache', 'replay', 'cpu'],
        emulator: 'in-process',
        minuteMs: 100,
        cpuPasses: 1,
        progress: false,
        out,
        print: () => undefined,
    })
    written = JSON.parse(readFileSync(out, 'utf8')) as BenchResults
})
afterAll(() => rmSync(directory, { recursive: true, force: true }))

function scenario(name: ScenarioResult['name']): ScenarioResult {
    const found = results.scenarios.find((result) => result.name === name)
    if (!found) throw new Error(`no ${name} result`)
    return found
}

function totalCalls(result: ScenarioResult): number {
    return Object.values(result.callsByRoute)
        .flatMap((statuses) => Object.values(statuses))
        .reduce((a, b) => a + b, 0)
}

describe('bench results', () => {
    test('the JSON file holds what runBench returned', () => {
        expect(written).toEqual(JSON.parse(JSON.stringify(results)))
        expect(Object.keys(written).sort()).toEqual(
            ['cpu', 'emulatorLimit', 'generatedAt', 'node', 'options', 'scenarios', 'targets'].sort()
        )
        expect(written.scenarios.map((result) => result.name)).toEqual([
            'plugin-server',
            'cdp',
            'no-cache',
            'replay',
        ])
    })

    test("targets are judged against the workload's own floor, 1 + people/events calls per event", () => {
        expect(workloadFloor({ events: EVENTS, people: PEOPLE })).toBeCloseTo(1.2, 10)
        expect(results.targets.map((target) => [target.label, target.met])).toEqual([
            ['plugin-server calls per delivered event ≤ 1.2120', true],
            ['plugin-server events lost = 0', true],
            ['plugin-server calls answered 429 < 1%', true],
            ['replay calls per delivered event ≤ 1.2120', true],
            ['replay events lost = 0', true],
        ])
    })

    test('replay: one POST per event and one search per person, plus its one GET /me', () => {
        const result = scenario('replay')
        expect(result.callsByRoute).toEqual({
            'GET /me': { '200': 1 },
            'POST /contacts/search': { '200': PEOPLE },
            'POST /events': { '202': EVENTS },
        })
    })

    test.each(['plugin-server', 'cdp', 'no-cache', 'replay'] as const)('%s: counts add up', (name) => {
        const result = scenario(name)
        expect(result.events).toBe(EVENTS)
        expect(result.lost).toBe(result.expected - result.stored)
        expect(result.stored).toBe(EVENTS)
        expect(result.delivered).toBe(result.stored)
        expect(result.setupCalls + result.calls).toBe(totalCalls(result))
        expect(result.callsPerDelivered).toBeCloseTo(result.calls / result.stored, 10)
        expect(result.rateLimited).toBe(0)
    })

    test('setup calls are one GET /me per harness worker, none for the reference client', () => {
        expect(scenario('plugin-server').setupCalls).toBe(WORKERS)
        expect(scenario('cdp').setupCalls).toBe(WORKERS)
        expect(scenario('no-cache').setupCalls).toBe(0)
    })

    test('no-cache costs exactly two calls per event: a search and a POST', () => {
        const result = scenario('no-cache')
        expect(result.callsByRoute['POST /contacts/search']).toEqual({ '200': EVENTS })
        expect(result.callsByRoute['POST /events']).toEqual({ '202': EVENTS })
        expect(result.callsPerDelivered).toBe(2)
    })

    test('plugin-server calls = one POST per event + one search per person + repeats + 429s', () => {
        const result = scenario('plugin-server')
        expect(result.searchedEmails).toBe(PEOPLE)
        expect(result.calls).toBe(
            result.stored + result.searchedEmails + result.duplicateSearches + result.rateLimited
        )
        expect(result.queued).toBe(0)
        expect(result.queueRuns).toEqual([])
    })

    test('cpu: the plugin’s own share is the difference of the two measurements, by both methods', () => {
        const cpu = results.cpu
        if (!cpu) throw new Error('no cpu result')
        for (const measurement of [cpu.http, cpu.stub]) {
            expect(measurement.ownMicrosPerEvent).toBeCloseTo(
                measurement.pluginMicrosPerEvent - measurement.nullPluginMicrosPerEvent,
                6
            )
            expect(measurement.pluginMicrosPerEvent).toBeGreaterThan(0)
        }
    })
})

describe('workload and flags', () => {
    test('the workload is reproducible, spreads events evenly, and gives every event its own created_at', () => {
        const a = buildWorkload(100, 10, 7)
        const b = buildWorkload(100, 10, 7)
        expect(a.events.map((event) => [event.distinct_id, event.event])).toEqual(
            b.events.map((event) => [event.distinct_id, event.event])
        )
        const perPerson = new Map<string, number>()
        for (const event of a.events)
            perPerson.set(event.distinct_id, (perPerson.get(event.distinct_id) ?? 0) + 1)
        expect([...perPerson.values()]).toEqual(Array(10).fill(10))
        expect(new Set(a.events.map((event) => event.timestamp)).size).toBe(100)
        expect(new Set(a.contacts.map((contact) => contact.email)).size).toBe(10)
    })

    test('flags override the defaults and unknown scenarios are refused', () => {
        expect(
            parseCli(['--events', '2000', '--people', '100', '--scenarios', 'plugin-server,no-cache'])
        ).toMatchObject({
            events: 2000,
            people: 100,
            scenarios: ['plugin-server', 'no-cache'],
        })
        expect(parseCli(['--out', ''])).toMatchObject({ out: null })
        expect(() => parseCli(['--scenarios', 'fast'])).toThrow(/unknown 'fast'/)
        expect(() => parseCli(['--events', '0'])).toThrow(/--events must be ≥ 1/)
        expect(() => parseCli(['--nope'])).toThrow(/Unknown option --nope/)
    })

    test('--quick: a small workload and the three judging scenarios, which flags can still change', () => {
        expect(parseCli(['--quick'])).toEqual(QUICK)
        expect(parseCli(['--quick', '--events', '500'])).toEqual({ ...QUICK, events: 500 })
    })

    test('--help prints the usage and runs nothing; a mistake exits 2 with the flag named', async () => {
        const out: string[] = []
        const stdout = jest
            .spyOn(process.stdout, 'write')
            .mockImplementation((chunk) => out.push(String(chunk)) > 0)
        const stderr = jest
            .spyOn(process.stderr, 'write')
            .mockImplementation((chunk) => out.push(String(chunk)) > 0)
        try {
            expect(await main(['--help'])).toBe(0)
            expect(out.join('')).toBe(`${USAGE}\n`)
            expect(await main(['--workers', 'many'])).toBe(2)
            expect(out.join('')).toMatch(/--workers needs a whole number, not 'many'/)
        } finally {
            stdout.mockRestore()
            stderr.mockRestore()
        }
    })
})
