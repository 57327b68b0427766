package cluster

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"strings"
)

// network is the node's only non-loopback network: a bridge with the node IP, on which the
// pods get their addresses, and a blackhole route for the service range (there is no
// kube-proxy, so a service IP must never leave the machine). The bridge has no gateway for
// the pods and nothing is masqueraded: the pods reach each other and the node, nothing else.
type network struct {
	Bridge   string
	PodCIDR  netip.Prefix // the bridge's /24; the node IP is its .1
	NodeIP   netip.Addr
	Services netip.Prefix // blackholed
}

// chooseNetwork picks a pod /24 and a service /24 in 10.213.0.0/16 and 10.214.0.0/16 that
// overlap no address or route on this machine.
func chooseNetwork() (network, error) {
	used, err := usedPrefixes()
	if err != nil {
		return network{}, err
	}
	start := rand.IntN(250)
	for i := 0; i < 250; i++ {
		n := (start+i)%250 + 1
		pods := netip.MustParsePrefix(fmt.Sprintf("10.213.%d.0/24", n))
		svcs := netip.MustParsePrefix(fmt.Sprintf("10.214.%d.0/24", n))
		if overlapsAny(pods, used) || overlapsAny(svcs, used) {
			continue
		}
		return network{
			Bridge:   fmt.Sprintf("kcb%d", n),
			PodCIDR:  pods,
			NodeIP:   pods.Addr().Next(),
			Services: svcs,
		}, nil
	}
	return network{}, fmt.Errorf("no free /24 in 10.213.0.0/16 and 10.214.0.0/16: every one overlaps an address or route here")
}

func overlapsAny(p netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		if u.Bits() > 0 && p.Overlaps(u) {
			return true
		}
	}
	return false
}

// usedPrefixes lists the IPv4 destinations of every route in every table and every address.
func usedPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, args := range [][]string{{"-4", "-o", "route", "show", "table", "all"}, {"-4", "-o", "addr", "show"}} {
		b, err := exec.Command("ip", args...).Output()
		if err != nil {
			return nil, fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			for _, f := range strings.Fields(line) {
				if p, err := netip.ParsePrefix(f); err == nil {
					out = append(out, p.Masked())
				} else if a, err := netip.ParseAddr(f); err == nil && a.Is4() {
					out = append(out, netip.PrefixFrom(a, 32))
				}
			}
		}
	}
	return out, nil
}

func ipCmd(args ...string) error {
	if b, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(b)))
	}
	return nil
}

// up creates the bridge and the blackhole route, and checks that the pod network routes
// only to the bridge and the service range nowhere.
func (n network) up() error {
	if err := ipCmd("link", "add", n.Bridge, "type", "bridge"); err != nil {
		return err
	}
	if err := ipCmd("addr", "add", netip.PrefixFrom(n.NodeIP, n.PodCIDR.Bits()).String(), "dev", n.Bridge); err != nil {
		return err
	}
	if err := ipCmd("link", "set", n.Bridge, "up"); err != nil {
		return err
	}
	if err := ipCmd("route", "add", "blackhole", n.Services.String()); err != nil {
		return err
	}
	return n.check()
}

// check verifies the routes: a pod address goes to the bridge, a service address is dropped.
func (n network) check() error {
	pod := n.PodCIDR.Addr().Next().Next().Next()
	b, err := exec.Command("ip", "-4", "-o", "route", "get", pod.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "dev "+n.Bridge+" ") {
		return fmt.Errorf("pod address %s does not route to bridge %s: %s %v", pod, n.Bridge, b, err)
	}
	svc := n.Services.Addr().Next()
	b, err = exec.Command("ip", "-4", "-o", "route", "get", svc.String()).CombinedOutput()
	if err == nil && !strings.Contains(string(b), "blackhole") {
		return fmt.Errorf("service address %s routes somewhere instead of the blackhole: %s", svc, b)
	}
	return nil
}

// down removes what up created; missing pieces are not an error.
func (n network) down() error {
	var errs []string
	if out, _ := exec.Command("ip", "-4", "route", "show", "type", "blackhole", n.Services.String()).Output(); len(strings.TrimSpace(string(out))) > 0 {
		if err := ipCmd("route", "del", "blackhole", n.Services.String()); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if exec.Command("ip", "link", "show", n.Bridge).Run() == nil {
		if err := ipCmd("link", "delete", n.Bridge); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("network cleanup: %s", strings.Join(errs, "; "))
	}
	return nil
}
