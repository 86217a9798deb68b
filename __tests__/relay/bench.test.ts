/** The relay benchmark's pure parts: its events are PostHog-shaped and distinct, its percentiles exact. */
import { benchEvent, percentile } from '../../relay/bench'
import { toPluginEvent } from '../../relay/payload'

test('bench events: one person per i mod 500, each with its own created_at', () => {
    const [a, b, c] = [benchEvent(1, 0), benchEvent(1, 1), benchEvent(1, 500)]
    expect(toPluginEvent(a)).toMatchObject({ uuid: '1-0', event: 'signed_in', distinct_id: 'user-0' })
    expect(a.event.properties).toEqual({ email: 'person0@customer0.example', plan: 'team' })
    expect(c.event.distinct_id).toBe(a.event.distinct_id)
    expect(new Set([a, b, c].map((item) => item.event.timestamp)).size).toBe(3)
})

test('percentile: nearest rank', () => {
    const sorted = Array.from({ length: 100 }, (_, i) => i + 1)
    expect(percentile(sorted, 50)).toBe(50)
    expect(percentile(sorted, 99)).toBe(99)
    expect(percentile([7], 99)).toBe(7)
    expect(percentile([], 50)).toBeNaN()
})
