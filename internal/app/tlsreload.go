package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultTLSReloadInterval is how often the certificate files are checked
// for a change.
const DefaultTLSReloadInterval = 10 * time.Second

// certReloader serves the key pair of two PEM files and loads it again
// when either file changes (a renewal by certbot or a Kubernetes secret
// update), without a restart. A pair that fails to load is logged and the
// one in use kept, so that a half-written renewal never breaks handshakes.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	cert              atomic.Pointer[tls.Certificate]
	stamp             [2]fileStamp // of the files last loaded (or tried)
	reloads           *prometheus.CounterVec
	notAfter          atomic.Int64 // unix seconds
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func newCertReloader(certFile, keyFile string, reg prometheus.Registerer, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	r.stamp = r.stamps()
	if err := r.load(); err != nil {
		return nil, err
	}
	r.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspush_tls_reloads_total", Help: "Loads of a changed TLS certificate pair, by result (ok, error: the previous pair stays in use).",
	}, []string{"result"})
	reg.MustRegister(r.reloads, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wspush_tls_certificate_expiry_seconds", Help: "Expiry (NotAfter, Unix time) of the TLS certificate being served.",
	}, func() float64 { return float64(r.notAfter.Load()) }))
	return r, nil
}

// config is the listener's TLS configuration. HTTP/1.1 only: the
// WebSocket upgrade needs it.
func (r *certReloader) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.cert.Load(), nil
		},
	}
}

func (r *certReloader) load() error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s, key %s: %w", r.certFile, r.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("TLS certificate %s: %w", r.certFile, err)
	}
	cert.Leaf = leaf
	r.cert.Store(&cert)
	r.notAfter.Store(leaf.NotAfter.Unix())
	return nil
}

func (r *certReloader) stamps() [2]fileStamp {
	var s [2]fileStamp
	for i, name := range []string{r.certFile, r.keyFile} {
		if fi, err := os.Stat(name); err == nil {
			s[i] = fileStamp{fi.ModTime(), fi.Size()}
		}
	}
	return s
}

// run checks the files every interval until ctx ends.
func (r *certReloader) run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.check()
		}
	}
}

// check loads the pair again if a file changed since the last try.
func (r *certReloader) check() {
	s := r.stamps()
	if s == r.stamp {
		return
	}
	r.stamp = s
	if err := r.load(); err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.log.Warn("TLS certificate changed but does not load; still serving the previous one", "error", err,
			"expires", time.Unix(r.notAfter.Load(), 0).UTC())
		return
	}
	r.reloads.WithLabelValues("ok").Inc()
	leaf := r.cert.Load().Leaf
	r.log.Info("TLS certificate reloaded", "subject", leaf.Subject.String(), "expires", leaf.NotAfter.UTC())
}
