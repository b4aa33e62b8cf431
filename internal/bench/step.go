package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wspush/wspush/internal/retry"
)

// runStep runs one step: workers connect, the servers are sampled, values
// flow (or the connections are held), the servers are sampled again with
// the connections still open, then the workers close them and report.
func (r *Runner) runStep(ctx context.Context, spec stepSpec) (StepReport, error) {
	s := StepReport{Connections: spec.conns}
	if spec.conns <= 0 {
		return s, errors.New("connections must be positive")
	}
	workers, nodes, ips, reason := r.layout(spec.conns)
	s.Workers, s.ServerNodes, s.SourceIPs = workers, nodes, ips
	if reason != "" {
		s.Skipped = reason
		return s, nil
	}
	plan := Plan{
		App: r.o.App, KeyPrefix: spec.prefix, Conns: spec.conns, KeysPerConn: spec.keysPerConn,
		KeySpace: spec.keySpace, SourceIPs: ips, Format: r.o.Format, Source: spec.source,
		Mode: spec.mode, MaxRate: spec.maxRate,
	}
	for _, u := range r.o.Servers {
		plan.URLs = append(plan.URLs, u.WS)
	}
	if err := plan.Validate(); err != nil {
		return s, err
	}
	drain := r.o.Drain
	if plan.MaxRate > 0 {
		// A latest key's last value may wait 1/max_rate.
		drain = max(drain, time.Duration(2/plan.MaxRate*float64(time.Second)))
	}
	cfgs := make([]WorkerConfig, workers)
	for w := range cfgs {
		first := w * spec.conns / workers
		cfgs[w] = WorkerConfig{
			ID: w, Plan: plan, First: first, Count: (w+1)*spec.conns/workers - first,
			RampRate: r.o.RampRate / float64(workers), MaxDialing: r.o.MaxDialing,
			HandshakeTimeout: r.o.HandshakeTimeout, Drain: drain, ProgressEvery: 250 * time.Millisecond,
			SilentExpect: uint64(spec.window / time.Second), Deadline: r.o.Deadline,
		}
	}
	var sp Spawner = InProcessSpawner{}
	if workers > 1 {
		sp = r.o.Spawner
		if sp == nil {
			sp = ExecSpawner{}
		}
	}

	var pub *publisher
	if spec.source.FromWsbench() {
		// Before connecting: a broker that is not there fails the step
		// at once.
		tr, err := r.openTransport(ctx, spec.source)
		if err != nil {
			return s, err
		}
		defer tr.close()
		pub, err = newPublisher(publisherConfig{
			Transport: tr, App: plan.App, Prefix: plan.KeyPrefix, Keys: plan.KeySpace,
			Rate: spec.rate, Total: spec.total, Cluster: r.cluster(spec.source), Subs: plan.subscribers(),
			Interval: r.o.BatchInterval, MaxBatch: r.o.MaxBatch, Concurrency: r.o.PublishConns,
			Stall: r.o.publishStall,
		})
		if err != nil {
			return s, err
		}
	}

	cpu0 := cpuSeconds()
	before, beforeErrs := r.scrapeAll(ctx)
	f, err := startFleet(ctx, sp, cfgs)
	if err != nil {
		return s, err
	}
	defer f.close()
	pv := startProgress(r.o.Progress, r.o.ProgressTTY, spec.label, spec.conns, f.snapshot)
	defer pv.close()

	pv.setPhase("ramp", 0)
	rampStart := time.Now()
	if _, err := f.await(msgReady); err != nil {
		return s, fmt.Errorf("connect: %w", err)
	}
	s.RampSeconds = time.Since(rampStart).Seconds()
	ready, readyErrs := r.scrapeAll(ctx)

	runStart := time.Now()
	var windowStart int64
	switch {
	case spec.source == SourceNone:
		pv.setPhase("hold", spec.hold)
		if !retry.Sleep(f.ctx, spec.hold) {
			return s, fmt.Errorf("hold: %w", context.Cause(f.ctx))
		}
		if err := f.broadcast(wireMsg{Type: msgFinish}); err != nil {
			return s, err
		}
	case pub != nil:
		windowStart = time.Now().UnixNano()
		if err := f.broadcast(wireMsg{Type: msgStart, WindowStart: windowStart}); err != nil {
			return s, err
		}
		if _, err := f.await(msgStarted); err != nil {
			return s, fmt.Errorf("start: %w", err)
		}
		pv.setPhase("publish", spec.window)
		if err := pub.run(f.ctx); err != nil {
			if f.ctx.Err() != nil {
				err = context.Cause(f.ctx)
			}
			return s, fmt.Errorf("publish: %w", err)
		}
		for i, c := range cfgs {
			m := wireMsg{Type: msgFinish, Expected: pub.expectedFor(&plan, c.First, c.Count)}
			if plan.latest() {
				m.Finals = pub.finalsFor(&plan, c.First, c.Count)
			}
			if err := f.send(i, m); err != nil {
				return s, err
			}
		}
		pv.setPhase("drain", drain)
	case spec.source == SourcePoller:
		// Values carry the start of their 1s step as ts; a window on whole
		// seconds holds exactly one step per second.
		start := time.Now().Add(spec.warmup).Truncate(time.Second).Add(time.Second)
		end := start.Add(spec.window)
		windowStart = start.UnixNano()
		if err := f.broadcast(wireMsg{Type: msgStart, WindowStart: windowStart, WindowEnd: end.UnixNano()}); err != nil {
			return s, err
		}
		if _, err := f.await(msgStarted); err != nil {
			return s, fmt.Errorf("start: %w", err)
		}
		pv.setPhase("measure", time.Until(end)+r.o.Drain)
		if !retry.Sleep(f.ctx, time.Until(end.Add(r.o.Drain))) {
			return s, fmt.Errorf("measure: %w", context.Cause(f.ctx))
		}
		if err := f.broadcast(wireMsg{Type: msgFinish}); err != nil {
			return s, err
		}
	default:
		return s, fmt.Errorf("unknown source %q", spec.source)
	}
	if _, err := f.await(msgDrained); err != nil {
		return s, fmt.Errorf("drain: %w", err)
	}
	s.RunSeconds = time.Since(runStart).Seconds()
	after, afterErrs := r.scrapeAll(ctx)

	pv.setPhase("close", 0)
	if err := f.broadcast(wireMsg{Type: msgStop}); err != nil {
		return s, err
	}
	results, err := f.await(msgResult)
	if err != nil {
		return s, fmt.Errorf("results: %w", err)
	}
	pv.close()
	f.close()
	s.ClientCPUSeconds = cpuSeconds() - cpu0

	if err := merge(&s, results); err != nil {
		return s, err
	}
	if pub != nil {
		s.Publications, s.PublishFailed, s.PublishRequests = pub.items, pub.failedItems, pub.requests
		s.PublishErrors = pub.errs
		s.PublishLag = pub.lag.Summarize()
		s.PublishMaxLagMs = s.PublishLag.Max
	}
	var lastReceive int64
	for _, m := range results {
		lastReceive = max(lastReceive, m.Result.LastReceive)
	}
	if lastReceive > windowStart && windowStart > 0 {
		s.DeliveriesPerSec = float64(s.Loss.Received) / (float64(lastReceive-windowStart) / 1e9)
	}
	var failedDeliv uint64
	if pub != nil {
		failedDeliv = pub.failedDeliv
	}
	switch den := s.Loss.Expected + failedDeliv; {
	case plan.latest():
		// Values skipped, failed publications included, are by design;
		// what counts is that each key's last value arrived.
		if s.Loss.Expected > 0 {
			s.ErrorRate = float64(s.Loss.Lost) / float64(s.Loss.Expected)
		}
		if s.Latest != nil && s.Loss.Expected > 0 {
			s.Latest.DeliveredPerSec = s.DeliveriesPerSec / float64(s.Loss.Expected)
		}
	case den > 0:
		s.ErrorRate = float64(s.Loss.Lost+failedDeliv) / float64(den)
	case spec.source == SourceNone:
		s.ErrorRate = float64(s.ConnectErrors+s.Dropped) / float64(spec.conns)
	}
	for i, u := range r.o.Servers {
		var errs []string
		for _, e := range []error{beforeErrs[i], readyErrs[i], afterErrs[i]} {
			if e != nil {
				errs = append(errs, e.Error())
			}
		}
		s.PerServer = append(s.PerServer, nodeFigures(u.WS, before[i], ready[i], after[i], errs))
	}
	s.Server = totals(s.PerServer)
	return s, nil
}

// merge adds the workers' results to s.
func merge(s *StepReport, results []wireMsg) error {
	lat, hs, sub := NewHistogram(), NewHistogram(), NewHistogram()
	var prog Progress
	for i, m := range results {
		res := m.Result
		if res == nil || res.Latency == nil || res.Handshake == nil || res.Subscribe == nil {
			return fmt.Errorf("worker %d: incomplete result", i)
		}
		lat.Merge(res.Latency)
		hs.Merge(res.Handshake)
		sub.Merge(res.Subscribe)
		prog.Add(res.Progress)
		s.Loss.Add(res.Loss)
		if res.Latest != nil {
			if s.Latest == nil {
				s.Latest = &LatestFigures{MaxRate: res.Latest.MaxRate}
			}
			s.Latest.merge(res.Latest)
		}
		for _, e := range res.Errors {
			s.ErrorSamples = addErrorSample(s.ErrorSamples, e)
		}
		for code, n := range res.CloseCodes {
			if s.CloseCodes == nil {
				s.CloseCodes = make(map[string]int)
			}
			s.CloseCodes[code] += n
		}
	}
	s.Connected, s.ConnectErrors, s.Dropped = prog.Connected, prog.Failed, prog.Dropped
	s.Stale, s.Foreign = prog.Stale, prog.Foreign
	s.Handshake, s.Subscribe, s.Latency = hs.Summarize(), sub.Summarize(), lat.Summarize()
	s.HandshakeHistogram = hs
	if lat.Count() > 0 {
		s.LatencyHistogram = lat
	}
	return nil
}

// openTransport returns what carries the values of source, which must
// be one of wsbench's (Source.FromWsbench).
func (r *Runner) openTransport(ctx context.Context, source Source) (transport, error) {
	switch source {
	case SourceHTTP:
		return &httpTransport{client: r.client, bases: r.bases(), apiKey: r.o.APIKey}, nil
	case SourceAMQP:
		t, err := dialAMQP(ctx, r.o.AMQPURL, r.o.AMQPExchange, r.o.PublishConns)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return t, nil
	}
	return nil, fmt.Errorf("source %q: wsbench does not publish it", source)
}

func (r *Runner) bases() []string {
	out := make([]string, len(r.o.Servers))
	for i, s := range r.o.Servers {
		out[i] = s.HTTP
	}
	return out
}

// scrapeAll samples every server; a server that cannot be read has a nil
// sample and an error.
func (r *Runner) scrapeAll(ctx context.Context) ([]*ServerSample, []error) {
	samples := make([]*ServerSample, len(r.o.Servers))
	errs := make([]error, len(r.o.Servers))
	for i, s := range r.o.Servers {
		smp, err := scrape(ctx, r.client, s.HTTP)
		if err != nil {
			errs[i] = err
			continue
		}
		samples[i] = &smp
	}
	return samples, errs
}
