// C++ users call lthfast ops through the dispatcher, like any torch op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("lthfast::global_magnitude_masks", "")
                .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList, int64_t)>();
  at::Tensor a = torch::tensor({0.5f, -3.0f, 1.0f, 0.25f});
  at::Tensor b = torch::tensor({2.0, -0.1}, torch::kDouble);
  auto masks = op.call({a, b}, {}, 3);  // prunes 0.1, 0.25, 0.5
  const bool ok = !masks[0][0].item<bool>() && masks[0][1].item<bool>() &&
                  masks[0][2].item<bool>() && !masks[0][3].item<bool>() &&
                  masks[1][0].item<bool>() && !masks[1][1].item<bool>();
  std::cout << (ok ? "lthfast C++ smoke test: ok" : "lthfast C++ smoke test: WRONG MASKS") << std::endl;
  return ok ? 0 : 1;
}
