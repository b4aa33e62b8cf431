// Package dataservice owns the upstream data center: a Client for its
// getRealTimeData API (docs/PROTOCOL.md, "Data-center API") and a Poller that asks
// it, on a robfig/cron schedule, for exactly the keys somebody is subscribed
// to, and publishes the values that changed.
//
// The poller learns what to poll through Subscriptions and hands values on
// through Publisher, two small interfaces defined here and implemented by
// the middle tier. dataservice must not touch connections, the subscription
// index, sequencing, history, Redis or AMQP: it never assigns seq and never
// writes to a subscriber.
//
// A failing or slow data center must not stall anything else: every request
// has a timeout and a response size limit, apps are polled concurrently with
// a bound, an app whose previous poll is still running is skipped, and a
// failing app backs off exponentially on its own.
package dataservice
