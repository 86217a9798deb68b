/** Test and benchmark helpers for the relay: webhook bodies as PostHog renders them, a client, child-process instances. */
import { ChildProcess, spawn } from 'node:child_process'
import * as path from 'node:path'
import { Agent, request } from 'node:http'
import type { WebhookItem } from './payload'

export const TEST_SECRET = 'relay-test-secret-0123456789'
export const TEST_TOKEN = 'test-token'
const ROOT = path.resolve(__dirname, '..')

/** The default body of the HTTP Webhook destination, rendered for one event (CDP's globals shape). */
export function webhookItem(options: {
    uuid: string
    event?: string
    distinctId?: string
    email?: string | null
    properties?: Record<string, unknown>
    personProperties?: Record<string, unknown> | null
    timestamp?: string
}): WebhookItem {
    const distinctId = options.distinctId ?? `user-${options.uuid}`
    const properties = { ...(options.email ? { email: options.email } : {}), ...options.properties }
    return {
        event: {
            uuid: options.uuid,
            event: options.event ?? 'signed_in',
            distinct_id: distinctId,
            properties,
            elements_chain: '',
            timestamp: options.timestamp ?? '2025-06-01T12:00:00.000Z',
            url: `https://us.posthog.com/project/1/events/${options.uuid}`,
        },
        person:
            options.personProperties === null
                ? null
                : {
                      id: `person-${distinctId}`,
                      properties: options.personProperties ?? {},
                      name: distinctId,
                      url: `https://us.posthog.com/project/1/person/${distinctId}`,
                  },
    }
}

export interface PostResult {
    status: number
    body: unknown
    headers: Record<string, string | string[] | undefined>
}

export interface PostOptions {
    /** Default: the test secret and a JSON content type. */
    headers?: Record<string, string>
    method?: string
    /** A keep-alive agent (as PostHog's fetch pools connections); default a fresh connection per request. */
    agent?: Agent
}

/** One request; a connection error resolves as status 0 (PostHog retries those). */
export function postJson(url: string, body: unknown, options: PostOptions = {}): Promise<PostResult> {
    const { headers = { 'x-relay-secret': TEST_SECRET }, method = 'POST', agent } = options
    const payload = typeof body === 'string' ? body : JSON.stringify(body)
    return new Promise((resolve) => {
        const req = request(
            url,
            {
                method,
                agent: agent ?? false,
                headers: {
                    'content-type': 'application/json',
                    'content-length': Buffer.byteLength(payload),
                    ...headers,
                },
            },
            (res) => {
                const chunks: Buffer[] = []
                res.on('data', (chunk: Buffer) => chunks.push(chunk))
                res.on('end', () => {
                    const text = Buffer.concat(chunks).toString('utf8')
                    let parsed: unknown = text
                    try {
                        parsed = JSON.parse(text)
                    } catch {
                        // not JSON: kept as text
                    }
                    resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers })
                })
                res.on('error', () => resolve({ status: 0, body: null, headers: {} }))
            }
        )
        req.on('error', () => resolve({ status: 0, body: null, headers: {} }))
        req.end(payload)
    })
}

/** Environment for a relay instance against the emulator (and Redis when given). */
export function relayEnv(options: {
    emulatorUrl: string
    redisUrl?: string
    port?: number
    extra?: Record<string, string>
}): Record<string, string> {
    return {
        PATH: process.env.PATH ?? '',
        HOST: '127.0.0.1',
        PORT: String(options.port ?? 0),
        RELAY_SECRET: TEST_SECRET,
        RELAY_INTERCOM_EMULATOR_URL: options.emulatorUrl,
        INTERCOM_API_KEY: TEST_TOKEN,
        triggeringEvents: 'signed_in,purchase_completed,report_viewed,invite_sent,plan_upgraded',
        LOG_LEVEL: 'info',
        ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
        ...options.extra,
    }
}

export interface RelayProcess {
    child: ChildProcess
    url: string
    pid: number
    /** Everything it wrote, for leak checks. */
    output(): string
    /** Resolves with the exit code or signal. */
    exited: Promise<string>
}

/** A relay as a real child process (`node --import tsx relay/main.ts`), so that it can be killed with -9. */
export async function spawnRelay(env: Record<string, string>, timeoutMs = 20_000): Promise<RelayProcess> {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'relay', 'main.ts')], {
        cwd: ROOT,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    const exited = new Promise<string>((resolve) =>
        child.once('exit', (code, signal) => resolve(signal ?? String(code)))
    )
    const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`relay did not start:\n${output}`)), timeoutMs)
        const onData = (chunk: Buffer) => {
            output += chunk.toString('utf8')
            const match = /"url":"(http:\/\/[^"]+)","redis"/.exec(output)
            if (match) {
                clearTimeout(timer)
                resolve(match[1])
            }
        }
        child.stdout!.on('data', onData)
        child.stderr!.on('data', onData)
        void exited.then(() => reject(new Error(`relay exited at start:\n${output}`)))
    })
    return { child, url, pid: child.pid!, output: () => output, exited }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export async function waitFor(
    check: () => boolean | Promise<boolean>,
    timeoutMs: number,
    what: string
): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!(await check())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
        await sleep(50)
    }
}
