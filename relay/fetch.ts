/** The fetch given to the plugin as meta.fetch: Intercom's hosts only, kept-alive connections, every call counted. */
import { Agent as HttpAgent } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import nodeFetch from 'node-fetch'
import { REGION_HOSTS, type FetchFn, type HttpRequest, type HttpResponse } from '../index'

/** Intercom's three API hosts, from the plugin's own region table: nothing else is ever called. */
const INTERCOM_HOSTS = new Set(Object.values(REGION_HOSTS).map((base) => new URL(base).hostname))

export interface FetchOptions {
    /** Loopback origin standing in for every Intercom host (the local emulator), or null. */
    override: string | null
    /** Called once per answered call with its status, or 'error' when none came. */
    onCall: (status: string) => void
}

export type IntercomFetch = FetchFn & { destroy(): void }

export function intercomFetch({ override, onCall }: FetchOptions): IntercomFetch {
    const httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 64 })
    const httpsAgent = new HttpsAgent({ keepAlive: true, maxSockets: 64 })
    const call = async (url: string, init: HttpRequest): Promise<HttpResponse> => {
        const requested = new URL(url)
        if (requested.protocol !== 'https:' || !INTERCOM_HOSTS.has(requested.hostname)) {
            onCall('refused')
            throw new Error(`Refused request to ${requested.host}: only Intercom's API hosts are called`)
        }
        const target = override ? override + requested.pathname + requested.search : url
        try {
            const response = await nodeFetch(target, {
                method: init.method,
                headers: init.headers,
                body: init.body,
                timeout: init.timeout,
                redirect: 'manual',
                agent: target.startsWith('https:') ? httpsAgent : httpAgent,
            })
            onCall(String(response.status))
            return response as unknown as HttpResponse
        } catch (error) {
            onCall('error')
            throw error
        }
    }
    const destroy = () => {
        httpAgent.destroy()
        httpsAgent.destroy()
    }
    return Object.assign(call, { destroy })
}
