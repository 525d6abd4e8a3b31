package store

import (
	"testing"

	"github.com/ambit-mesh/ambit/api/workload"
)

const addressType = "type.googleapis.com/istio.workload.Address"

func TestUnchangedUpdateIsNotAChange(t *testing.T) {
	s := NewStore()
	r := Resource{Name: "a", Message: &workload.Address{Type: &workload.Address_Workload{Workload: &workload.Workload{Uid: "a"}}}, Node: "n1"}
	if err := s.Update(addressType, []Resource{r}, nil); err != nil {
		t.Fatal(err)
	}
	before := s.Watch()
	s.Update(addressType, []Resource{r}, nil)
	select {
	case <-before:
		t.Error("an identical update woke the watchers")
	default:
	}
	r.Node = "n2"
	s.Update(addressType, []Resource{r}, nil)
	select {
	case <-before:
	default:
		t.Error("moving a resource to another node did not wake the watchers")
	}
	if v := s.View(addressType, true, "n1", nil); len(v) != 0 {
		t.Errorf("node n1's view = %v after the move; want empty", v)
	}
	if err := s.Update("type.googleapis.com/istio.security.Authorization", []Resource{r}, nil); err == nil {
		t.Error("a workload Address stored under the Authorization type was accepted")
	}
}
