package app

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"

	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

// BinaryDeliveryAuto chooses the binary delivery by what the cluster supports and admits.
const BinaryDeliveryAuto = "auto"

// imageVolumeSince is the first Kubernetes minor whose image volumes kcbackup relies on by
// default (the ImageVolume feature is on by default and the common runtimes support it).
const imageVolumeSince = 36

// ResolveBinaryDelivery turns --binary-delivery into a delivery: an explicit choice as it
// is. auto is init-container before Kubernetes 1.36 (every OpenShift 4 release up to 4.22
// runs 1.35 or earlier); from 1.36 on it is decided per namespace by what the API server
// admits there (kccontroller.DeliverByProbe: a server-side dry-run pod with an image volume,
// refused where a feature gate, an admission policy or a webhook turns image volumes off).
// why says how it was decided.
func ResolveBinaryDelivery(setting string, restCfg *rest.Config) (kccontroller.BinaryDelivery, string, error) {
	if setting != BinaryDeliveryAuto {
		return kccontroller.BinaryDelivery(setting), "--binary-delivery=" + setting, nil
	}
	dc, err := discovery.NewDiscoveryClientForConfig(restCfg)
	if err != nil {
		return "", "", fmt.Errorf("--binary-delivery=auto: %w", err)
	}
	v, err := dc.ServerVersion()
	if err != nil {
		return "", "", fmt.Errorf("--binary-delivery=auto: read the API server's version: %w", err)
	}
	return DeliveryForVersion(v.Major, v.Minor)
}

// DeliveryForVersion is auto's choice for a server version as /version reports it (minor
// "33+" on some distributions).
func DeliveryForVersion(major, minor string) (kccontroller.BinaryDelivery, string, error) {
	mi, err := strconv.Atoi(strings.TrimRight(minor, "+"))
	if err != nil || major != "1" {
		return "", "", fmt.Errorf("--binary-delivery=auto: cannot read the API server's version %q.%q; set --binary-delivery", major, minor)
	}
	why := fmt.Sprintf("auto: Kubernetes 1.%d", mi)
	if mi >= imageVolumeSince {
		return kccontroller.DeliverByProbe, why + ": per namespace, image-volume where the API server admits a dry-run pod with one, else init-container", nil
	}
	return kccontroller.DeliverByInitContainer, why + fmt.Sprintf(" (image volumes from 1.%d)", imageVolumeSince), nil
}
