// One function per subcommand (each in its own file); each returns the process exit code.
#pragma once

namespace ditlab::cli {

int run_train(int argc, char** argv);
int run_sample(int argc, char** argv);
int run_forward(int argc, char** argv);
int run_config(int argc, char** argv);
int run_export(int argc, char** argv);
int run_convert(int argc, char** argv);
int run_flops(int argc, char** argv);
int run_bench(int argc, char** argv);
int run_mup(int argc, char** argv);
int run_train_vae(int argc, char** argv);
int run_encode(int argc, char** argv);
int run_train_classifier(int argc, char** argv);
int run_eval(int argc, char** argv);
int run_sweep(int argc, char** argv);

}  // namespace ditlab::cli
