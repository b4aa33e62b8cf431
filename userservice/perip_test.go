package userservice

import "testing"

func TestPerIPCountsByAddressAndIPv6Block(t *testing.T) {
	p := newPerIP(2)
	for _, remote := range []string{"10.0.0.1:1000", "[::ffff:10.0.0.1]:1001"} { // one address, two spellings
		if !p.acquire(remote) {
			t.Fatalf("%s refused under the limit", remote)
		}
	}
	if p.acquire("10.0.0.1:1002") {
		t.Fatal("third connection of 10.0.0.1 accepted")
	}
	if !p.acquire("10.0.0.2:1000") {
		t.Fatal("another address refused")
	}
	p.release("10.0.0.1:1000")
	if !p.acquire("10.0.0.1:1003") {
		t.Fatal("a released place not reusable")
	}
	// IPv6: one /64 is one client.
	if !p.acquire("[2001:db8:1:2::1]:1") || !p.acquire("[2001:db8:1:2:ffff::9]:1") || p.acquire("[2001:db8:1:2::3]:1") {
		t.Fatal("a /64 is not counted as one client")
	}
	if !p.acquire("[2001:db8:1:3::1]:1") {
		t.Fatal("another /64 refused")
	}
	for _, remote := range []string{"10.0.0.2:1000", "10.0.0.1:1001", "10.0.0.1:1003", "[2001:db8:1:2::1]:1", "[2001:db8:1:2::2]:1", "[2001:db8:1:3::1]:1"} {
		p.release(remote)
	}
	if len(p.n) != 0 {
		t.Fatalf("counts left after every release: %v", p.n)
	}
	if !newPerIP(0).acquire("10.0.0.1:1") {
		t.Fatal("limit 0 refused")
	}
}
