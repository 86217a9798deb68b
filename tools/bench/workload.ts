/** The bench's workload: N triggering events from P people Intercom knows, interleaved at random, and its config. */
import { SeedContact } from '../intercom/emulator'
import { seededRandom } from '../lib/random'
import { HarnessEvent } from '../runtime/harness'

export const TOKEN = 'bench-token'
const EVENT_NAMES = ['signed_in', 'report_viewed', 'invite_sent', 'plan_upgraded', 'purchase_completed']
const PLANS = ['free', 'team', 'business']

export const BENCH_CONFIG: Record<string, string> = {
    intercomApiKey: TOKEN,
    region: 'US',
    triggeringEvents: EVENT_NAMES.join(','),
    metadataProperties: 'plan,seats,revenue,$current_url:url',
    eventNameMapping: 'purchase_completed:purchased',
}

export interface Workload {
    events: HarnessEvent[]
    contacts: SeedContact[]
}

function shuffle<T>(items: T[], random: () => number): T[] {
    for (let i = items.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1))
        ;[items[i], items[j]] = [items[j], items[i]]
    }
    return items
}

const personEmail = (person: number): string => `person${person}@customer${person % 50}.example`

function eventProperties(person: number, name: string, random: () => number): Record<string, unknown> {
    const properties: Record<string, unknown> = {
        email: personEmail(person),
        plan: PLANS[person % PLANS.length],
        $current_url: `https://app.example.com/${name.replace(/_/g, '-')}`,
        $lib: 'web',
    }
    if (name === 'invite_sent') properties.seats = 1 + Math.floor(random() * 20)
    if (name === 'purchase_completed') {
        properties.revenue = Math.round(random() * 50_000) / 100
        properties.currency = 'EUR'
    }
    return properties
}

/**
 * People take turns at random (a seeded shuffle); timestamps are one second apart in feed order, so every
 * event has its own created_at and Intercom's deduplication can only merge true retries.
 */
export function buildWorkload(events: number, people: number, seed: number): Workload {
    const random = seededRandom(seed)
    const owners = shuffle(
        Array.from({ length: events }, (_, i) => i % people),
        random
    )
    const start = Date.now() - events * 1000
    return {
        contacts: Array.from({ length: people }, (_, person) => ({
            email: personEmail(person),
            // Every tenth person is a lead: their events only land when posted by contact id.
            role: person % 10 === 9 ? 'lead' : 'user',
            external_id: person % 10 === 9 ? undefined : `user_${person}`,
        })),
        events: owners.map((person, i) => {
            const name = EVENT_NAMES[Math.floor(random() * EVENT_NAMES.length)]
            return {
                uuid: `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`,
                event: name,
                distinct_id: `user_${person}`,
                timestamp: new Date(start + i * 1000).toISOString(),
                properties: eventProperties(person, name, random),
            }
        }),
    }
}
