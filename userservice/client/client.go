package client

import (
	"context"
	"errors"
)

// Client is a connection to a wspush node that reconnects and resumes on
// its own. Its methods are safe for concurrent use.
type Client struct {
	cfg Config
}

// New checks cfg and starts the client's connection loop; it does not wait
// for a connection. Subscriptions made before the connection opens are
// sent when it does.
func New(cfg Config) (*Client, error) {
	return nil, errors.New("wspush client: not built yet")
}

// Dial is New followed by a wait for the first connection: it returns
// when the connection is open, or the terminal error of the first attempts
// (e.g. a *CloseError 4001), or ctx's error, having closed the Client.
// ctx bounds the wait only; the Client runs until Close.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	return nil, errors.New("wspush client: not built yet")
}

// Subscribe subscribes keys of app and returns after the server acked them
// all (in commands of at most MaxKeysPerSubscribe keys, paced), or the first
// error: a *CommandError for an error reply (nothing of this call stays
// subscribed), ctx's error, ErrClosed. A key may be held by one Subscription
// at a time. h is called for every message of these keys, from now on and
// across reconnects, until Unsubscribe or Close.
func (c *Client) Subscribe(ctx context.Context, app string, keys []string, opts SubscribeOptions, h Handler) (*Subscription, error) {
	return nil, errors.New("wspush client: not built yet")
}

// Unsubscribe stops keys of app: their Handler is not called for them
// once Unsubscribe has started. It returns after the server acked, or at
// once when not connected.
func (c *Client) Unsubscribe(ctx context.Context, app string, keys []string) error {
	return errors.New("wspush client: not built yet")
}

// Positions returns the position of every subscribed key of app whose
// Handler has been called at least once (ack, data or reset): what to pass
// as SubscribeOptions.Since to resume later, e.g. after a restart.
func (c *Client) Positions(app string) map[string]Position {
	return nil
}

// State returns the current connection state.
func (c *Client) State() State { return StateClosed }

// Done is closed when the Client ends: Close, or a terminal error.
func (c *Client) Done() <-chan struct{} { return nil }

// Err returns why the Client ended: nil while it runs, ErrClosed after
// Close, else the terminal error (*CloseError, *HandshakeError).
func (c *Client) Err() error { return nil }

// Close closes the connection (1000) and stops every goroutine of the
// Client, waiting for them; no Handler is called after it returns. It must
// not be called from a Handler or OnState.
func (c *Client) Close() error { return nil }

// Subscription is the keys of one Subscribe.
type Subscription struct {
	c    *Client
	app  string
	keys []string
}

// App returns the subscription's app.
func (s *Subscription) App() string { return s.app }

// Keys returns the keys still subscribed.
func (s *Subscription) Keys() []string { return append([]string(nil), s.keys...) }

// Unsubscribe unsubscribes the subscription's keys; see Client.Unsubscribe.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	return s.c.Unsubscribe(ctx, s.app, s.Keys())
}
