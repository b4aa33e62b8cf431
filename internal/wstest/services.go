package wstest

import (
	"net"
	"os"
	"testing"
	"time"
)

// The Redis and RabbitMQ of the integration tests (scripts/test.sh starts
// them on their loopback ports).
const (
	RedisURL = "redis://127.0.0.1:6379/0"
	AMQPURL  = "amqp://guest:guest@127.0.0.1:5672"
)

// RequireServices skips the test when Redis or RabbitMQ is unreachable, or
// fails it when WSPUSH_REQUIRE_SERVICES=1 (CI).
func RequireServices(t testing.TB) {
	t.Helper()
	for _, addr := range []string{"127.0.0.1:6379", "127.0.0.1:5672"} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
				t.Fatalf("%s unreachable (WSPUSH_REQUIRE_SERVICES=1): %v", addr, err)
			}
			t.Skipf("%s unreachable: %v", addr, err)
		}
		c.Close()
	}
}
