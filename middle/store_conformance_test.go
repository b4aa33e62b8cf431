package middle_test

import (
	"testing"
	"time"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/middle/storetest"
)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, idemWindow time.Duration) middle.Store {
		return middle.NewMemoryStore(middle.DefaultHistorySize, 0, idemWindow)
	})
}

// TestMemoryStoreConformanceKeyLimit: the suite with the default key limit
// of an embedded node (its keys fit: nothing is evicted under it).
func TestMemoryStoreConformanceKeyLimit(t *testing.T) {
	storetest.Run(t, func(t *testing.T, idemWindow time.Duration) middle.Store {
		return middle.NewMemoryStore(middle.DefaultHistorySize, 0, idemWindow).LimitKeys(middle.DefaultMaxKeys, nil)
	})
}
