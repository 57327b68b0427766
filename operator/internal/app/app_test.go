package app

import (
	"strings"
	"testing"
	"time"
)

func TestValidateNamesTheBadSetting(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no sidecar image", func(c *Config) { c.SidecarImage = "" }, "--sidecar-image"},
		{"bad metrics address", func(c *Config) { c.MetricsAddr = "8080" }, "--metrics-bind-address"},
		{"poll too fast", func(c *Config) { c.PollInterval = time.Millisecond }, "--poll-interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.SidecarImage = "kcbackup:dev"
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	c := DefaultConfig()
	c.SidecarImage = "kcbackup:dev"
	c.MetricsAddr = "0"
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}
