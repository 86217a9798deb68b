/**
 * The Intercom model (model.ts) served over HTTP on loopback, for end-to-end tests, the demo run, the benchmark
 * and the fault campaign: a thin server that reads each request, lets the model answer it, and writes the answer.
 */
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http'
import { AddressInfo } from 'node:net'

import { EmulatorOptions, Intercom } from './model'

export { REGIONS } from './model'
export type { EmulatorOptions, EmulatorStats, RecordedRequest, Region, ResolvedOptions } from './model'
export type { DataAttribute, SeedContact, StoredCompany, StoredContact, StoredEvent } from './workspace'
export type { LongStringPolicy } from './rules'

/** The model's controls (configure, addContact, contacts(), events(), requests(), stats()…) plus the server. */
export interface Emulator extends Omit<
    Intercom,
    'answer' | 'rateLimitHeaders' | 'delay' | 'stop' | 'fetch' | 'workspace'
> {
    url: string
    port: number
    close(): Promise<void>
}

function readRawBody(req: IncomingMessage): Promise<string> {
    return new Promise((resolve, reject) => {
        const chunks: Buffer[] = []
        req.on('data', (chunk: Buffer) => chunks.push(chunk))
        req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
        req.on('error', reject)
    })
}

function plainHeaders(req: IncomingMessage): Record<string, string> {
    const entries = Object.entries(req.headers).filter(
        (entry): entry is [string, string | string[]] => entry[1] !== undefined
    )
    return Object.fromEntries(
        entries.map(([name, value]) => [name, Array.isArray(value) ? value.join(', ') : value])
    )
}

class EmulatorServer extends Intercom implements Emulator {
    url = ''
    port = 0
    private readonly server: Server = createServer()
    private closed = false

    async listen(): Promise<void> {
        this.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
            this.serve(req, res).catch((error: unknown) => {
                // A bug in the emulator must still answer, or the caller would hang until its timeout.
                const message = error instanceof Error ? error.message : String(error)
                console.error(`intercom emulator: internal error: ${message}`)
                this.write(res, 500, { type: 'error.list', errors: [{ code: 'server_error', message }] })
            })
        })
        await new Promise<void>((resolve, reject) => {
            this.server.once('error', reject)
            this.server.listen(this.options.port, this.options.host, () => {
                this.server.off('error', reject)
                resolve()
            })
        })
        this.port = (this.server.address() as AddressInfo).port
        const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host
        this.url = `http://${host}:${this.port}`
    }

    private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
        const raw = await readRawBody(req)
        const url = new URL(req.url ?? '/', 'http://emulator.invalid')
        const outcome = this.answer({ method: req.method ?? 'GET', url, headers: plainHeaders(req), raw })
        if (outcome.kind === 'drop') {
            req.socket.destroy()
            return
        }
        if (outcome.delayed && this.options.latencyMs > 0) await this.delay(this.options.latencyMs)
        this.write(res, outcome.reply.status, outcome.reply.body)
    }

    private write(res: ServerResponse, status: number, body: unknown): void {
        if (res.destroyed || res.headersSent) return
        const text = body === undefined ? '' : JSON.stringify(body)
        res.writeHead(status, {
            'Content-Type': 'application/json; charset=utf-8',
            'Content-Length': Buffer.byteLength(text),
            ...this.rateLimitHeaders(),
        })
        res.end(text)
    }

    async close(): Promise<void> {
        if (this.closed) return
        this.closed = true
        this.stop()
        const closing = new Promise<void>((resolve) => this.server.close(() => resolve()))
        // Keep-alive sockets of fetch clients would otherwise hold close() open for seconds.
        this.server.closeAllConnections()
        await closing
    }
}

/** Starts an emulator on loopback; resolves once it listens. */
export async function startEmulator(options: EmulatorOptions = {}): Promise<Emulator> {
    const emulator = new EmulatorServer(options)
    await emulator.listen()
    return emulator
}
