package controller

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// TestUninjectTakesOutExactlyWhatInjectPutIn: for both ways of delivering the binary, a
// template with the sidecar injected and then taken out is the template it was, whatever
// else it holds.
func TestUninjectTakesOutExactlyWhatInjectPutIn(t *testing.T) {
	for _, d := range []BinaryDelivery{DeliverByImageVolume, DeliverByInitContainer} {
		t.Run(string(d), func(t *testing.T) {
			w := statefulSet()
			w.Template().Labels = map[string]string{"app": "pg"}
			before := w.Template().DeepCopy()
			loc, err := locateData(w, "postgres", "")
			if err != nil {
				t.Fatal(err)
			}
			spec := &kcv1.KeycloakBackupSpec{Storage: kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "archive"}}}
			sc, err := buildSidecar("kcbackup:test", d, spec, w.Name(), loc)
			if err != nil {
				t.Fatal(err)
			}
			inject(w.Template(), sc)
			if !hasSidecar(w.Template()) {
				t.Fatal("inject left no sidecar")
			}
			uninject(w.Template())
			after := w.Template()
			if len(after.Annotations) == 0 {
				after.Annotations = before.Annotations
			}
			if !equality.Semantic.DeepEqual(before, after) {
				t.Errorf("after inject and uninject the template is\n%+v\nwant\n%+v", after, before)
			}
		})
	}
}
