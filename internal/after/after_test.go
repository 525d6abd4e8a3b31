package after

import (
	"context"
	"slices"
	"testing"
)

func TestReply(t *testing.T) {
	var got []string
	add := func(s string) func() { return func() { got = append(got, s) } }

	Reply(context.Background(), add("no queue"))
	q := &Queue{}
	ctx := With(context.Background(), q)
	Reply(ctx, add("first"))
	Reply(ctx, add("second"))
	if want := []string{"no queue"}; !slices.Equal(got, want) {
		t.Fatalf("before Run: ran %q, want %q", got, want)
	}
	q.Run()
	Reply(ctx, add("after Run"))
	if want := []string{"no queue", "first", "second", "after Run"}; !slices.Equal(got, want) {
		t.Errorf("ran %q, want %q", got, want)
	}
}
