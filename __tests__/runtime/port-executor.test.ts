/** The port package (`npm run port`) run as PostHog's current executor runs ported plugins (variant 6). */
import nock from 'nock'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

import { buildPort } from '../../port/build'
import { hostNodeFetch } from '../../tools/runtime/load-plugin'
import {
    CdpExecutor,
    CdpGlobals,
    createCdpExecutor,
    PostHogRetryError,
} from '../../tools/runtime/cdp-executor'
import { cdpFullFetch } from '../../tools/runtime/fetch'
import { VARIANTS } from '../../tools/runtime/variants'

const US = 'https://api.intercom.io'
const INPUTS = { intercomApiKey: 'port-token', triggeringEvents: 'signed_up', useEuropeanDataStorage: 'No' }
const GLOBALS: CdpGlobals = {
    event: {
        uuid: 'port-1',
        event: 'signed_up',
        distinct_id: 'd-1',
        timestamp: '2026-01-01T00:00:00.000Z',
        properties: { email: 'ada@example.com' },
    },
    person: { id: 'p-1', properties: { email: 'ada@example.com' } },
}
const CREATED_AT = Date.parse(GLOBALS.event.timestamp) / 1000

let dir: string
let source: { index: string; template: string; exportName: string }
const executors: CdpExecutor[] = []

beforeAll(async () => {
    nock.disableNetConnect()
    dir = mkdtempSync(path.join(tmpdir(), 'posthog-intercom-port-'))
    const [index, template] = await buildPort(dir)
    source = {
        index: readFileSync(index, 'utf8'),
        template: readFileSync(template, 'utf8'),
        exportName: 'intercomPlugin',
    }
})
afterEach(() => {
    for (const executor of executors.splice(0)) executor.close()
    const pending = nock.pendingMocks()
    nock.cleanAll()
    expect(pending).toEqual([])
})
afterAll(() => {
    nock.enableNetConnect()
    rmSync(dir, { recursive: true, force: true })
})

function executor(options: { testFunction?: boolean } = {}): CdpExecutor {
    const made = createCdpExecutor({
        source,
        inputs: INPUTS,
        fetch: cdpFullFetch(hostNodeFetch),
        retry: VARIANTS[6].retry,
        person: true,
        delayScale: 0.001,
        ...options,
    })
    executors.push(made)
    return made
}

function intercomSetup(): void {
    nock(US)
        .get('/me')
        .reply(200, { type: 'admin', app: { region: 'US' } })
    nock(US)
        .post('/contacts/search')
        .reply(200, { type: 'list', data: [{ id: 'c1', role: 'user' }] })
}

test('the event reaches Intercom on the right contact, in one run', async () => {
    intercomSetup()
    nock(US)
        .post('/events', { event_name: 'signed_up', created_at: CREATED_AT, metadata: {}, id: 'c1' })
        .matchHeader('authorization', 'Bearer port-token')
        .reply(202, '')
    const outcome = await executor().invoke(GLOBALS)
    expect(outcome.runs).toHaveLength(1)
    expect(outcome.error).toBeUndefined()
})

test("an outage outlasting the in-place retries is handed over as PostHog's own RetryError, and the re-run delivers", async () => {
    intercomSetup()
    nock(US)
        .post('/events')
        .times(4)
        .reply(503, { errors: [{ message: 'down' }] })
    nock(US).post('/events').reply(202, '')
    const outcome = await executor().invoke(GLOBALS)
    expect(outcome.runs.map((run) => run.error === undefined)).toEqual([false, true])
    expect(outcome.runs[0].error).toBeInstanceOf(PostHogRetryError)
}, 20_000)

test('a test-function run (every POST answered by PostHog) ends without an error and says why', async () => {
    nock(US)
        .get('/me')
        .reply(200, { type: 'admin', app: { region: 'US' } })
    const outcome = await executor({ testFunction: true }).invoke(GLOBALS)
    expect(outcome.error).toBeUndefined()
    expect(outcome.runs[0].logs.map((log) => log.message)).toContainEqual(
        expect.stringMatching(/^Test run of event port-1: .*nothing was sent to Intercom/)
    )
})
