/** Starts a private, throw-away Debian `redis-server` for tests, fault runs and benchmarks. */
import { ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import * as path from 'node:path'

import { sleep } from './sleep'

export interface RedisServer {
    /** `redis://127.0.0.1:<port>`: what ioredis and REDIS_URL take. */
    readonly url: string
    readonly port: number
    /** Stops it for good (SIGTERM; the data is thrown away). */
    stop(): Promise<void>
    /** `kill -9`, then a fresh start on the same port, as an operator's restart would look. */
    restart(options?: { downMs?: number }): Promise<void>
    /** Down until `start()`: for "Redis is down" scenarios. */
    kill(): Promise<void>
    start(): Promise<void>
}

const REDIS_BINARY = process.env.REDIS_SERVER ?? 'redis-server'
/** Loopback only, nothing written to disk. */
const PRIVATE = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']

/** True when Debian's redis-server can be run here (CI installs it; see .ci/run). */
export function redisAvailable(): boolean {
    return spawnSync(REDIS_BINARY, ['--version'], { stdio: 'ignore' }).status === 0
}

/** A port in a private range away from Redis's own 6379; startRedis retries on a collision. */
const freePort = (): number => 20_000 + Math.floor(Math.random() * 20_000)

function listening(port: number): Promise<boolean> {
    return new Promise((resolve) => {
        const socket = createConnection({ port, host: '127.0.0.1' })
        const done = (connected: boolean) => {
            socket.destroy()
            resolve(connected)
        }
        socket.once('connect', () => done(true)).once('error', () => done(false))
    })
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!(await listening(port))) {
        if (Date.now() > deadline) throw new Error(`redis-server did not listen on ${port}`)
        await sleep(25)
    }
}

/** A redis-server on a private loopback port, no persistence, in a temporary folder. */
export async function startRedis(): Promise<RedisServer> {
    if (!redisAvailable()) {
        throw new Error(
            `${REDIS_BINARY} was not found: the runtime, fault and relay tests need a real Redis. Install it (Debian: apt-get install redis-server; .ci/run does this itself) or set REDIS_SERVER to its path.`
        )
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'posthog-intercom-redis-'))
    let port = freePort()
    let child: ChildProcess | null = null

    const launch = async (): Promise<void> => {
        for (let tries = 0; ; tries++) {
            const args = ['--port', String(port), '--dir', dir, ...PRIVATE]
            const proc = spawn(REDIS_BINARY, args, { stdio: 'ignore' }).on('error', () => undefined)
            try {
                await waitForPort(port, 5000)
                child = proc
                return
            } catch (error) {
                proc.kill('SIGKILL')
                if (tries >= 3) throw error
                port = freePort()
            }
        }
    }
    const halt = async (signal: NodeJS.Signals): Promise<void> => {
        const proc = child
        child = null
        if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
        const exited = new Promise((resolve) => proc.once('exit', resolve))
        proc.kill(signal)
        await exited
    }

    await launch()
    return {
        get url() {
            return `redis://127.0.0.1:${port}`
        },
        get port() {
            return port
        },
        start: launch,
        kill: () => halt('SIGKILL'),
        async restart({ downMs = 0 } = {}) {
            await halt('SIGKILL')
            await sleep(downMs)
            await launch()
        },
        async stop() {
            await halt('SIGTERM')
            rmSync(dir, { recursive: true, force: true })
        },
    }
}
