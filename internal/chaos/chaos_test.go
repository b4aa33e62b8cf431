package chaos

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/wstest"
)

var (
	long   = flag.Bool("chaos.long", false, "the long form: 25 s runs on 3 nodes, a 12 s freeze")
	global = flag.Bool("chaos.global", false, "stall Redis with CLIENT PAUSE ALL (stops every client of the shared Redis) instead of the run's proxy")
	race   = flag.Bool("chaos.race", false, "build the nodes with -race (slower; a race fails the node's run)")
)

// reports collects the rows of the table printed after the long form.
var reports struct {
	sync.Mutex
	rows []Report
}

func TestMain(m *testing.M) {
	flag.Parse()
	if *race {
		BuildFlags = []string{"-race"}
	}
	code := m.Run()
	RemoveBinary()
	if *long && len(reports.rows) > 0 {
		fmt.Println(Table(reports.rows))
	}
	os.Exit(code)
}

// scenario is a fault's run in the form the flags ask for: a few seconds
// at 200 values/s over 4 keys on 2 nodes, or 25 s over 8 keys on 3.
func scenario(f Fault, faultLen time.Duration) Scenario {
	sc := Scenario{Name: f.Name, Fault: f, Nodes: 2, Keys: 4, Rate: 200,
		Before: 1500 * time.Millisecond, After: 2500 * time.Millisecond, Drain: 30 * time.Second,
		// resume must never run out of history in these runs: a reset
		// then would be the retention's doing, not the fault's
		Args: []string{"--history-size", "1024"}}
	if *long {
		sc.Nodes, sc.Keys, sc.Before, sc.Drain = 3, 8, 8*time.Second, 60*time.Second
		sc.After = max(25*time.Second-sc.Before-faultLen, 10*time.Second)
	}
	return sc
}

func run(t *testing.T, sc Scenario) {
	wstest.RequireServices(t)
	rep := Run(t, sc)
	reports.Lock()
	reports.rows = append(reports.rows, rep)
	reports.Unlock()
}

func TestAMQPConnectionsClosed(t *testing.T) { run(t, scenario(CloseAMQP, 0)) }

func TestRedisClientsKilled(t *testing.T) { run(t, scenario(KillRedisClients, 0)) }

func TestRedisStall(t *testing.T) {
	run(t, scenario(StallRedis(3*time.Second, *global), 3*time.Second))
}

func TestStoreKeysDeleted(t *testing.T) { run(t, scenario(DeleteStore, 0)) }

func TestNodeKilled(t *testing.T) { run(t, scenario(KillNode, 0)) }

func TestNodeFrozen(t *testing.T) {
	d := 6 * time.Second
	if *long {
		d = 12 * time.Second
	}
	run(t, scenario(FreezeNode(d), d))
}

func TestBurst(t *testing.T) {
	sc := scenario(NoFault, 0)
	sc.Name, sc.Rate = "burst 5,000/s", 5000
	if !*long {
		sc.Before, sc.After = time.Second, time.Second
	}
	sc.Fault.Name = sc.Name
	run(t, sc)
}
